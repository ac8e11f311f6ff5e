#!/usr/bin/env python3
"""Structural checks of the deployment files (no Docker engine runs on CI machines):
docker-compose.yml services, images/builds, ports, depends_on and config mounts that
exist in the repository; the Grafana dashboard JSON; the provisioning files."""
import json
import os
import re
import sys

import yaml

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
errors = []


def need(cond, msg):
    if not cond:
        errors.append(msg)


compose = yaml.safe_load(open(os.path.join(root, "docker-compose.yml")))
services = compose.get("services", {})
for name in ["gateway", "worker-1", "worker-2", "redis", "mongodb", "jaeger", "prometheus", "grafana"]:
    need(name in services, f"docker-compose.yml: service {name} is missing")
named_volumes = set((compose.get("volumes") or {}).keys())
for name, svc in services.items():
    need("image" in svc or "build" in svc, f"{name}: needs an image or a build")
    if "build" in svc:
        ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
        need(os.path.isfile(os.path.join(root, ctx, "Dockerfile")), f"{name}: build context {ctx} has no Dockerfile")
    for p in svc.get("ports", []):
        need(re.fullmatch(r"\d+:\d+", str(p)) is not None, f"{name}: port {p!r} is not HOST:CONTAINER")
    for dep in svc.get("depends_on", []):
        need(dep in services, f"{name}: depends_on {dep} is not a service")
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./"):
            need(os.path.exists(os.path.join(root, src)), f"{name}: mount source {src} does not exist in the repo")
        else:
            need(src in named_volumes, f"{name}: volume {src} is not declared")
need(services.get("jaeger", {}).get("environment", {}).get("COLLECTOR_OTLP_ENABLED") == "true", "jaeger: OTLP must be on")
gw_cmd = " ".join(services.get("gateway", {}).get("command", []))
cfg = re.search(r"/etc/adflow/(configs/\S+)", gw_cmd)
need(cfg is not None and os.path.isfile(os.path.join(root, cfg.group(1))), "gateway: its --config file must exist in the repo")

dash = json.load(open(os.path.join(root, "monitoring/grafana/dashboards/adflow.json")))
need(dash.get("uid") and dash.get("panels"), "dashboard: needs a uid and panels")
for p in dash.get("panels", []):
    need(p.get("targets") and all(t.get("expr") for t in p["targets"]), f"dashboard panel {p.get('title')}: every target needs an expr")
for f in ["monitoring/grafana/provisioning/datasources/prometheus.yml", "monitoring/grafana/provisioning/dashboards/adflow.yml"]:
    doc = yaml.safe_load(open(os.path.join(root, f)))
    need(doc.get("apiVersion") == 1, f"{f}: apiVersion 1 expected")

if errors:
    print("\n".join("deploy check: " + e for e in errors))
    sys.exit(1)
print(f"deploy check: {len(services)} compose services, {len(dash['panels'])} dashboard panels OK")
