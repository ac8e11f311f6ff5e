//! Analytics end to end: numbers equal what was sent, per window, and after a restart.

mod common;

use adflow_domain::pb::{self, EventType, Metric, Period, Window, period};
use common::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn at(id: &str, ad: &str, camp: &str, t: EventType, ago_ms: i64, revenue: Option<f64>) -> pb::AdEvent {
    let mut e = event(id, ad, t);
    e.campaign_id = camp.into();
    e.timestamp_ms = now_ms() - ago_ms;
    e.revenue_usd = revenue;
    e
}

fn window(w: Window) -> Option<Period> {
    Some(Period { period: Some(period::Period::Window(w as i32)) })
}

async fn stats(c: &mut AnalyticsClient, ad: &str, w: Window) -> pb::Stats {
    c.get_ad_stats(pb::GetAdStatsRequest { ad_id: ad.into(), period: window(w) })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

fn counts(s: &pb::Stats) -> (u64, u64, u64, u64) {
    let c = s.counts.unwrap();
    (c.impressions, c.clicks, c.conversions, c.total)
}

/// Checks every number the sent events imply; run before and after a restart.
async fn check(c: &mut AnalyticsClient) {
    let h = stats(c, "ad-a", Window::LastHour).await;
    assert_eq!(counts(&h), (4, 2, 1, 7));
    assert_eq!(h.ctr, 0.5);
    assert_eq!(h.conversion_rate, 0.5);
    assert_eq!(h.revenue_usd, 2.5);
    assert_eq!((h.last_hour_events, h.last_day_events), (7, 10));
    let d = stats(c, "ad-a", Window::LastDay).await;
    assert_eq!(counts(&d), (7, 2, 1, 10));
    let w = stats(c, "ad-a", Window::LastWeek).await;
    assert_eq!(counts(&w), (9, 2, 1, 12));
    let all = stats(c, "", Window::LastWeek).await;
    assert_eq!(counts(&all), (10, 5, 1, 16));
    assert_eq!(all.revenue_usd, 2.5);
    let none = stats(c, "ad-unknown", Window::LastWeek).await;
    assert_eq!(counts(&none), (0, 0, 0, 0));

    // An explicit range covering only the 3-hours-ago impressions.
    let now = now_ms();
    let r = pb::TimeRange { from_ms: now - 4 * HOUR, to_ms: now - 2 * HOUR };
    let s = c
        .get_ad_stats(pb::GetAdStatsRequest {
            ad_id: "ad-a".into(),
            period: Some(Period { period: Some(period::Period::Range(r)) }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(counts(&s), (3, 0, 0, 3));

    let top = c
        .top_ads(pb::TopAdsRequest {
            metric: Metric::Clicks as i32,
            limit: 2,
            period: window(Window::LastDay),
            min_denominator: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = top.ads.iter().map(|s| (s.id.as_str(), s.counts.unwrap().clicks)).collect();
    assert_eq!(ids, vec![("ad-b", 3), ("ad-a", 2)]);
    let top_ctr = c
        .top_ads(pb::TopAdsRequest {
            metric: Metric::Ctr as i32,
            limit: 10,
            period: window(Window::LastDay),
            min_denominator: 1,
        })
        .await
        .unwrap()
        .into_inner();
    // ad-b has clicks but one impression: CTR 3.0; ad-a 2/7.
    assert_eq!(top_ctr.ads.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["ad-b", "ad-a"]);

    let camps = c
        .events_by_campaign(pb::EventsByCampaignRequest {
            period: window(Window::LastWeek),
            campaign_id: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = camps.campaigns.iter().map(|s| (s.id.as_str(), s.counts.unwrap().total)).collect();
    assert_eq!(got, vec![("cmp-1", 12), ("cmp-2", 4)]);
}

#[tokio::test]
async fn analytics_equal_what_was_sent_per_window_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = TestGateway::start(cfg.clone()).await;
    let mut ingest = gw.ingest().await;
    let mut evs = Vec::new();
    let mut n = 0;
    let mut add = |ad: &str, camp: &str, t: EventType, ago: i64, k: usize, rev: Option<f64>| {
        for _ in 0..k {
            n += 1;
            evs.push(at(&format!("an-{n}"), ad, camp, t, ago, rev));
        }
    };
    add("ad-a", "cmp-1", EventType::Impression, 5 * MIN, 4, None);
    add("ad-a", "cmp-1", EventType::Click, 10 * MIN, 2, None);
    add("ad-a", "cmp-1", EventType::Conversion, 20 * MIN, 1, Some(2.5));
    add("ad-a", "cmp-1", EventType::Impression, 3 * HOUR, 3, None);
    add("ad-a", "cmp-1", EventType::Impression, 50 * HOUR, 2, None);
    add("ad-b", "cmp-2", EventType::Impression, 2 * MIN, 1, None);
    add("ad-b", "cmp-2", EventType::Click, 2 * MIN, 3, None);
    let r = ingest.send_events(batch(evs.clone())).await.unwrap().into_inner();
    assert_eq!(r.accepted as usize, evs.len());
    // Duplicates and rejects never count.
    let mut bad = evs[0].clone();
    bad.event_id = "an-bad".into();
    bad.r#type = 0;
    let r = ingest.send_events(batch(vec![evs[0].clone(), bad])).await.unwrap().into_inner();
    assert_eq!((r.duplicates, r.rejected), (1, 1));

    let mut a = gw.analytics().await;
    check(&mut a).await;
    gw.stop().await;

    let gw = TestGateway::start(cfg).await;
    let mut a = gw.analytics().await;
    check(&mut a).await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_analytics_queries_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let mut a = gw.analytics().await;
    let backwards =
        Some(Period { period: Some(period::Period::Range(pb::TimeRange { from_ms: 10, to_ms: 5 })) });
    let e = a.get_ad_stats(pb::GetAdStatsRequest { ad_id: "x".into(), period: backwards }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("from_ms"), "{}", e.message());
    let e = a.top_ads(pb::TopAdsRequest { limit: 5000, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = a.top_ads(pb::TopAdsRequest { metric: 77, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    gw.stop().await;
}
