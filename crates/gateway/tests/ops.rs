//! Health and reflection, the two services operators and load balancers rely on.

mod common;

use common::*;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::ServerReflectionRequest as V1Request;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1Client;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Req;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Resp;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaReq;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResp;

#[tokio::test]
async fn health_follows_the_store_and_reflection_lists_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let ch = gw.channel().await;

    let mut health = HealthClient::new(ch.clone());
    for service in ["", "adflow.v1.EventIngest", "adflow.v1.Analytics"] {
        let mut status = ServingStatus::Unknown;
        for _ in 0..50 {
            match health.check(HealthCheckRequest { service: service.into() }).await {
                Ok(r) => {
                    status = r.into_inner().status();
                    if status == ServingStatus::Serving {
                        break;
                    }
                }
                Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "{e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }

    let req =
        AlphaRequest { host: String::new(), message_request: Some(AlphaReq::ListServices(String::new())) };
    let mut stream = AlphaClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(AlphaResp::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha did not list services");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["adflow.v1.EventIngest", "adflow.v1.Analytics", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }

    let req = V1Request {
        host: String::new(),
        message_request: Some(V1Req::FileContainingSymbol("adflow.v1.EventIngest".into())),
    };
    let mut stream =
        V1Client::new(ch).server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(V1Resp::FileDescriptorResponse(fd)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 did not return a file descriptor");
    };
    assert!(!fd.file_descriptor_proto.is_empty());
    gw.stop().await;
}
