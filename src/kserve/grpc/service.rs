//! The methods of `inference.GRPCInferenceService`: each decodes its
//! request ([`super::convert`]), calls the shared KServe operations
//! ([`crate::kserve::protocol`]) and encodes the answer; a refusal becomes
//! a gRPC status whose code follows the error's kind ([`status`]) and
//! whose message is the one the HTTP API gives. Every answer is counted in
//! `gsinfer_grpc_responses_total{code}`.
//!
//! The methods that run or list models (ModelInfer, RepositoryIndex, and
//! the unserved ModelStreamInfer, RepositoryModelLoad and
//! RepositoryModelUnload) need the bearer token of `status.token_file`
//! when it is set, as the HTTP API's `POST .../infer` and
//! `POST /v2/repository/index` do ([`needs_token`]), in the request
//! metadata `authorization: Bearer <token>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

use super::convert;
use super::proto;
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use crate::http::limits::bearer_matches;
use crate::infer::RequestSource;
use crate::kserve::protocol::{self, KserveError};
use crate::kserve::{Context, ServedModels};
use crate::secrets::Secret;
use crate::status::metrics::CodeLabel;
use crate::status::StatusBoard;

/// The methods gsinfer serves, for the message of those it does not.
const SERVED: &str = "ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, \
                      ModelConfig, ModelInfer, ModelStatistics and RepositoryIndex";

/// Whether the method `method` (its name in the service, e.g.
/// `ModelInfer`) runs or lists models and so needs the bearer token when
/// one is configured: the rule [`crate::kserve::needs_token`] applies to
/// HTTP paths.
pub fn needs_token(method: &str) -> bool {
    matches!(
        method,
        "ModelInfer"
            | "ModelStreamInfer"
            | "RepositoryIndex"
            | "RepositoryModelLoad"
            | "RepositoryModelUnload"
    )
}

/// The gRPC status of a refused KServe request: `INVALID_ARGUMENT`,
/// `NOT_FOUND`, `UNAVAILABLE` (not ready, queue full),
/// `DEADLINE_EXCEEDED` (no result within `status.infer_timeout_ms`) or
/// `INTERNAL`, with the error's message.
pub fn status(e: &KserveError) -> Status {
    let code = match e {
        KserveError::Invalid(_) => Code::InvalidArgument,
        KserveError::NotFound(_) => Code::NotFound,
        KserveError::NotReady(_) | KserveError::QueueFull { .. } => Code::Unavailable,
        KserveError::TimedOut { .. } => Code::DeadlineExceeded,
        KserveError::Engine(_) | KserveError::Repository(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`,
/// ...), as the gRPC spec's status code table writes them: the `code`
/// label of `gsinfer_grpc_responses_total`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "method `{method}` is not served by gsinfer; it serves {SERVED} (docs/http-kserve.md, gRPC)"
    ))
}

/// `inference.GRPCInferenceService` over the served models.
#[derive(Debug)]
pub struct KserveGrpc {
    board: Arc<StatusBoard>,
    models: Arc<ServedModels>,
    /// `status.token_file`'s token; its `Debug` is redacted.
    token: Option<Secret>,
    infer_timeout: Duration,
    /// One permit per inference waiting for its batch (`grpc.max_concurrent_infers`).
    infer_slots: Arc<Semaphore>,
}

impl KserveGrpc {
    /// The service over `models`, reporting to `board`; `token` guards the
    /// methods of [`needs_token`]; an inference waits up to
    /// `infer_timeout` for its results, at most `max_concurrent_infers` at once.
    pub fn new(
        board: Arc<StatusBoard>,
        models: Arc<ServedModels>,
        token: Option<Secret>,
        infer_timeout: Duration,
        max_concurrent_infers: usize,
    ) -> Self {
        Self {
            board,
            models,
            token,
            infer_timeout,
            infer_slots: Arc::new(Semaphore::new(max_concurrent_infers.max(1))),
        }
    }

    fn context(&self) -> Context<'_> {
        Context {
            board: &self.board,
            models: &self.models,
            infer_timeout: self.infer_timeout,
        }
    }

    /// Refuses a call to `method` without the token, when one is needed.
    fn authorize<T>(&self, request: &Request<T>, method: &str) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            // As HTTP header values are: perf_analyzer's `-H "authorization: Bearer x"` sends " Bearer x".
            .map(str::trim);
        if needs_token(method) && !bearer_matches(given, token.expose()) {
            return Err(Status::unauthenticated(format!(
                "{method} needs the metadata `authorization: Bearer <token>` with the token of status.token_file"
            )));
        }
        Ok(())
    }

    /// Counts the answer by its code and wraps it.
    fn answer<T>(&self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.board
            .metrics
            .grpc_responses
            .get_or_create(&CodeLabel {
                code: code_name(code).into(),
            })
            .inc();
        result.map(Response::new)
    }

    fn model_ready_(
        &self,
        r: proto::ModelReadyRequest,
    ) -> Result<proto::ModelReadyResponse, Status> {
        let model = protocol::find_model(&self.models, &r.name, Some(&r.version))
            .map_err(|e| status(&e))?;
        Ok(proto::ModelReadyResponse {
            ready: self.board.is_model_ready(&model.key),
        })
    }

    fn model_metadata_(
        &self,
        r: proto::ModelMetadataRequest,
    ) -> Result<proto::ModelMetadataResponse, Status> {
        let model = protocol::find_model(&self.models, &r.name, Some(&r.version))
            .map_err(|e| status(&e))?;
        Ok(convert::model_metadata(protocol::model_metadata(
            &model,
            &self.models.versions(&model.name),
        )))
    }

    fn model_config_(
        &self,
        r: proto::ModelConfigRequest,
    ) -> Result<proto::ModelConfigResponse, Status> {
        let model = protocol::find_model(&self.models, &r.name, Some(&r.version))
            .map_err(|e| status(&e))?;
        Ok(proto::ModelConfigResponse {
            config: Some(convert::model_config(&model.config)),
        })
    }

    fn model_statistics_(
        &self,
        r: proto::ModelStatisticsRequest,
    ) -> Result<proto::ModelStatisticsResponse, Status> {
        let models = if r.name.is_empty() {
            self.models.all()
        } else {
            vec![
                protocol::find_model(&self.models, &r.name, Some(&r.version))
                    .map_err(|e| status(&e))?,
            ]
        };
        Ok(proto::ModelStatisticsResponse {
            model_stats: models
                .iter()
                .map(|m| convert::statistics(&m.name, m.version, &m.stats.snapshot()))
                .collect(),
        })
    }

    fn repository_index_(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<proto::RepositoryIndexResponse, Status> {
        self.authorize(&request, "RepositoryIndex")?;
        let r = request.into_inner();
        if !r.repository_name.is_empty() {
            return Err(Status::not_found(format!(
                "unknown repository `{}`; gsinfer has one, leave repository_name empty",
                r.repository_name
            )));
        }
        let index = protocol::repository_index(&self.context()).map_err(|e| status(&e))?;
        Ok(convert::repository_index(index, r.ready))
    }

    /// ModelInfer: checks, then runs the request on the model's batcher
    /// ([`protocol::infer`]) on a blocking thread, at most
    /// `grpc.max_concurrent_infers` at once.
    async fn model_infer_(
        &self,
        request: Request<proto::ModelInferRequest>,
        received: Instant,
    ) -> Result<proto::ModelInferResponse, Status> {
        self.authorize(&request, "ModelInfer")?;
        let request = request.into_inner();
        let model = protocol::find_model(
            &self.models,
            &request.model_name,
            Some(&request.model_version),
        )
        .map_err(|e| status(&e))?;
        protocol::require_ready(&self.context(), &model).map_err(|e| status(&e))?;
        self.board
            .metrics
            .input(RequestSource::Grpc.as_str(), 1, request.encoded_len());
        let decoded = convert::decode_infer(&request, &model).map_err(|e| status(&e))?;
        let slot = Arc::clone(&self.infer_slots)
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("gsinfer is stopping; retry on the next start"))?;
        let (board, models, timeout) = (
            Arc::clone(&self.board),
            Arc::clone(&self.models),
            self.infer_timeout,
        );
        let run_model = Arc::clone(&model);
        let (batch, values) = (decoded.batch, decoded.values);
        let rows = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let ctx = Context {
                board: &board,
                models: &models,
                infer_timeout: timeout,
            };
            protocol::infer(
                &ctx,
                &run_model,
                RequestSource::Grpc,
                batch,
                values,
                received,
            )
        })
        .await
        .map_err(|e| Status::internal(format!("the inference task failed: {e}")))?
        .map_err(|e| status(&e))?;
        let response = convert::encode_infer(&request.id, &model, batch, &rows, &decoded.outputs);
        self.board.record_end_to_end(
            &model.key,
            RequestSource::Grpc.as_str(),
            received.elapsed().as_micros() as u64,
        );
        Ok(response)
    }
}

type GrpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for KserveGrpc {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> GrpcResult<proto::ServerLiveResponse> {
        self.answer(Ok(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> GrpcResult<proto::ServerReadyResponse> {
        self.answer(Ok(proto::ServerReadyResponse {
            ready: self.board.are_models_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> GrpcResult<proto::ModelReadyResponse> {
        self.answer(self.model_ready_(request.into_inner()))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> GrpcResult<proto::ServerMetadataResponse> {
        self.answer(Ok(proto::ServerMetadataResponse {
            name: protocol::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: protocol::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> GrpcResult<proto::ModelMetadataResponse> {
        self.answer(self.model_metadata_(request.into_inner()))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> GrpcResult<proto::ModelInferResponse> {
        let received = Instant::now();
        let result = self.model_infer_(request, received).await;
        self.answer(result)
    }

    type ModelStreamInferStream = tonic::codegen::BoxStream<proto::ModelStreamInferResponse>;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<proto::ModelInferRequest>>,
    ) -> GrpcResult<Self::ModelStreamInferStream> {
        let refused = self
            .authorize(&request, "ModelStreamInfer")
            .and(Err(unimplemented("ModelStreamInfer")));
        self.answer(refused)
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> GrpcResult<proto::ModelConfigResponse> {
        self.answer(self.model_config_(request.into_inner()))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> GrpcResult<proto::ModelStatisticsResponse> {
        self.answer(self.model_statistics_(request.into_inner()))
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> GrpcResult<proto::RepositoryIndexResponse> {
        self.answer(self.repository_index_(request))
    }

    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> GrpcResult<proto::RepositoryModelLoadResponse> {
        let refused = self
            .authorize(&request, "RepositoryModelLoad")
            .and(Err(unimplemented("RepositoryModelLoad")));
        self.answer(refused)
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> GrpcResult<proto::RepositoryModelUnloadResponse> {
        let refused = self
            .authorize(&request, "RepositoryModelUnload")
            .and(Err(unimplemented("RepositoryModelUnload")));
        self.answer(refused)
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<proto::SystemSharedMemoryStatusRequest>,
    ) -> GrpcResult<proto::SystemSharedMemoryStatusResponse> {
        self.answer(Err(unimplemented("SystemSharedMemoryStatus")))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<proto::SystemSharedMemoryRegisterRequest>,
    ) -> GrpcResult<proto::SystemSharedMemoryRegisterResponse> {
        self.answer(Err(unimplemented("SystemSharedMemoryRegister")))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<proto::SystemSharedMemoryUnregisterRequest>,
    ) -> GrpcResult<proto::SystemSharedMemoryUnregisterResponse> {
        self.answer(Err(unimplemented("SystemSharedMemoryUnregister")))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<proto::CudaSharedMemoryStatusRequest>,
    ) -> GrpcResult<proto::CudaSharedMemoryStatusResponse> {
        self.answer(Err(unimplemented("CudaSharedMemoryStatus")))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<proto::CudaSharedMemoryRegisterRequest>,
    ) -> GrpcResult<proto::CudaSharedMemoryRegisterResponse> {
        self.answer(Err(unimplemented("CudaSharedMemoryRegister")))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<proto::CudaSharedMemoryUnregisterRequest>,
    ) -> GrpcResult<proto::CudaSharedMemoryUnregisterResponse> {
        self.answer(Err(unimplemented("CudaSharedMemoryUnregister")))
    }

    async fn trace_setting(
        &self,
        _: Request<proto::TraceSettingRequest>,
    ) -> GrpcResult<proto::TraceSettingResponse> {
        self.answer(Err(unimplemented("TraceSetting")))
    }

    async fn log_settings(
        &self,
        _: Request<proto::LogSettingsRequest>,
    ) -> GrpcResult<proto::LogSettingsResponse> {
        self.answer(Err(unimplemented("LogSettings")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use crate::infer::stats::Timing;
    use crate::infer::{ItemResult, Job, Work};
    use crate::kserve::test_model as model;
    use crate::status::{ModelState, StatusConfig};
    use proto::model_infer_request::InferInputTensor;

    const TOKEN: &str = "t0ken";

    fn service(
        token: Option<&str>,
        timeout: Duration,
    ) -> (KserveGrpc, Arc<StatusBoard>, Arc<ServedModels>) {
        let board = StatusBoard::new(StatusConfig::default());
        let models = Arc::new(ServedModels::new(None));
        models.insert(model(true));
        let svc = KserveGrpc::new(
            Arc::clone(&board),
            Arc::clone(&models),
            token.map(Secret::new),
            timeout,
            2,
        );
        (svc, board, models)
    }

    fn set_ready(board: &StatusBoard) {
        board.set_model("m", "tract", ModelState::Ready, 1, 1000, &[4]);
    }

    /// A fake engine on the model's queue: each item's outputs are the sum
    /// of its input (forecast, twice) and its row (score).
    fn fake_engine(models: &ServedModels) -> std::thread::JoinHandle<()> {
        let handle = models.get("m").unwrap().handle.clone();
        std::thread::spawn(move || {
            while let Some(Batch { items, .. }) = handle.next_blocking() {
                for Job { work, .. } in items {
                    if let Work::Request(r) = work {
                        let sum: f32 = r.values.iter().sum();
                        let _ = r.reply.send(ItemResult {
                            row: r.row,
                            outputs: Ok(vec![vec![sum, sum], vec![r.row as f32]]),
                            timing: Timing::default(),
                        });
                    }
                }
            }
        })
    }

    fn infer_request(model: &str, shape: Vec<i64>, values: &[f32]) -> proto::ModelInferRequest {
        proto::ModelInferRequest {
            model_name: model.into(),
            id: "r1".into(),
            inputs: vec![InferInputTensor {
                name: "window".into(),
                datatype: "FP32".into(),
                shape,
                ..InferInputTensor::default()
            }],
            raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..proto::ModelInferRequest::default()
        }
    }

    fn with_token<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    fn counted(board: &StatusBoard, code: &str) -> u64 {
        board
            .metrics
            .grpc_responses
            .get_or_create(&CodeLabel { code: code.into() })
            .get()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn inference_runs_through_the_batcher_and_comes_back_raw() {
        let (svc, board, models) = service(None, Duration::from_secs(30));
        set_ready(&board);
        let engine = fake_engine(&models);
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let r = block_on(svc.model_infer(Request::new(infer_request("m", vec![2, 2, 3], &values))))
            .unwrap()
            .into_inner();
        assert_eq!((r.model_name.as_str(), r.id.as_str()), ("m", "r1"));
        assert_eq!(r.outputs[0].shape, vec![2, 2]);
        let forecast = protocol::f32_from_le(&r.raw_output_contents[0]);
        assert_eq!(forecast, vec![15.0, 15.0, 51.0, 51.0]);
        assert_eq!(
            protocol::f32_from_le(&r.raw_output_contents[1]),
            vec![0.0, 1.0]
        );
        let stats =
            block_on(svc.model_statistics(Request::new(proto::ModelStatisticsRequest::default())))
                .unwrap()
                .into_inner();
        let s = stats.model_stats[0].inference_stats.unwrap();
        assert_eq!(s.success.unwrap().count, 1);
        assert_eq!(counted(&board, "OK"), 2);
        models.get("m").unwrap().handle.close();
        engine.join().unwrap();
    }

    #[test]
    fn refusals_carry_the_code_of_their_kind_and_are_counted() {
        let (svc, board, _models) = service(None, Duration::from_millis(20));
        // Unknown model: NOT_FOUND on every method that names one.
        let e = block_on(svc.model_infer(Request::new(infer_request(
            "nope",
            vec![1, 2, 3],
            &[0.0; 6],
        ))))
        .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(
            e.message().contains("unknown model `nope`") && e.message().contains("\"m\""),
            "{e:?}"
        );
        let ready = proto::ModelReadyRequest {
            name: "nope".into(),
            version: String::new(),
        };
        assert_eq!(
            block_on(svc.model_ready(Request::new(ready)))
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        let meta = proto::ModelMetadataRequest {
            name: "m".into(),
            version: "7".into(),
        };
        let e = block_on(svc.model_metadata(Request::new(meta))).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("version 7 is not served"), "{e:?}");
        // Not ready yet: UNAVAILABLE, and ready says false.
        let e =
            block_on(svc.model_infer(Request::new(infer_request("m", vec![1, 2, 3], &[0.0; 6]))))
                .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("model `m` is not ready"), "{e:?}");
        let ready = proto::ModelReadyRequest {
            name: "m".into(),
            version: "1".into(),
        };
        assert!(
            !block_on(svc.model_ready(Request::new(ready.clone())))
                .unwrap()
                .into_inner()
                .ready
        );
        set_ready(&board);
        assert!(
            block_on(svc.model_ready(Request::new(ready)))
                .unwrap()
                .into_inner()
                .ready
        );
        // A bad shape: INVALID_ARGUMENT naming it.
        let e =
            block_on(svc.model_infer(Request::new(infer_request("m", vec![9, 2, 3], &[0.0; 54]))))
                .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("[9, 2, 3]"), "{e:?}");
        // No engine takes the items: DEADLINE_EXCEEDED, a failed request.
        let e =
            block_on(svc.model_infer(Request::new(infer_request("m", vec![1, 2, 3], &[0.0; 6]))))
                .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(e.message().contains("within 20 ms"), "{e:?}");
        assert_eq!(svc.models.get("m").unwrap().stats.outcomes(), (0, 1));
        assert_eq!(counted(&board, "NOT_FOUND"), 3);
        assert_eq!(counted(&board, "UNAVAILABLE"), 1);
        assert_eq!(counted(&board, "INVALID_ARGUMENT"), 1);
        assert_eq!(counted(&board, "DEADLINE_EXCEEDED"), 1);
        assert_eq!(counted(&board, "OK"), 2);
    }

    #[test]
    fn token_guards_running_and_listing_only() {
        let (svc, board, _models) = service(Some(TOKEN), Duration::from_millis(20));
        set_ready(&board);
        for request in [
            Request::new(infer_request("m", vec![9, 2, 3], &[])),
            with_token(infer_request("m", vec![9, 2, 3], &[]), "wrong"),
        ] {
            let e = block_on(svc.model_infer(request)).unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated);
            assert!(
                e.message().contains("authorization: Bearer <token>"),
                "{e:?}"
            );
        }
        // With the token it gets as far as the shape check; the value is
        // trimmed as an HTTP header's is (perf_analyzer -H sends " Bearer x").
        for token in [TOKEN.to_string(), format!("{TOKEN} ")] {
            let request = with_token(infer_request("m", vec![9, 2, 3], &[]), &token);
            let e = block_on(svc.model_infer(request)).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
        let mut spaced = Request::new(infer_request("m", vec![9, 2, 3], &[]));
        spaced
            .metadata_mut()
            .insert("authorization", format!(" Bearer {TOKEN}").parse().unwrap());
        let e = block_on(svc.model_infer(spaced)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let index = proto::RepositoryIndexRequest::default();
        assert_eq!(
            block_on(svc.repository_index(Request::new(index.clone())))
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        let listed = block_on(svc.repository_index(with_token(index, TOKEN)))
            .unwrap()
            .into_inner();
        assert_eq!(listed.models[0].name, "m");
        assert_eq!(listed.models[0].state, "READY");
        // Metadata, readiness and statistics stay open, as over HTTP.
        let meta = proto::ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        };
        let meta = block_on(svc.model_metadata(Request::new(meta)))
            .unwrap()
            .into_inner();
        assert_eq!(meta.inputs[0].shape, vec![-1, 2, 3]);
        assert!(
            block_on(svc.server_ready(Request::new(proto::ServerReadyRequest {})))
                .unwrap()
                .into_inner()
                .ready
        );
        assert_eq!(counted(&board, "UNAUTHENTICATED"), 3);
    }

    #[test]
    fn unserved_methods_are_unimplemented_with_a_message() {
        let (svc, board, _models) = service(None, Duration::from_millis(20));
        let e = block_on(svc.trace_setting(Request::new(proto::TraceSettingRequest::default())))
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(
            e.message().contains("`TraceSetting` is not served")
                && e.message().contains("ModelInfer"),
            "{e:?}"
        );
        let e = block_on(
            svc.repository_model_load(Request::new(proto::RepositoryModelLoadRequest::default())),
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert_eq!(counted(&board, "UNIMPLEMENTED"), 2);
    }

    #[test]
    fn the_token_rule_is_the_http_one() {
        for (method, path) in [
            ("ModelInfer", "/v2/models/m/infer"),
            ("RepositoryIndex", "/v2/repository/index"),
            ("ModelMetadata", "/v2/models/m"),
            ("ModelReady", "/v2/models/m/ready"),
            ("ModelConfig", "/v2/models/m/config"),
            ("ModelStatistics", "/v2/models/m/stats"),
            ("ServerMetadata", "/v2"),
            ("ServerReady", "/v2/health/ready"),
        ] {
            assert_eq!(
                needs_token(method),
                crate::kserve::needs_token(path),
                "{method} vs {path}"
            );
        }
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
