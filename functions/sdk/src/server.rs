//! The HTTP endpoint: `POST` on any path carries one `ToFunction`; the target address inside
//! it, not the path, picks the function, so any `urlPathTemplate` works. Failures answer
//! with [`crate::HandleError::http_status`] and a plain-text reason, and never stop the
//! server.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;

use crate::StatefulFunctions;

/// StateFun's default `payload_max_bytes`: a full batch of 1000 messages must fit.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Serves `functions` on `listener` until `shutdown` completes, then finishes the requests
/// in flight and returns.
pub async fn serve(
    listener: TcpListener,
    functions: StatefulFunctions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let types: Vec<String> = functions.function_types().map(|t| t.to_string()).collect();
    tracing::info!(address = %listener.local_addr()?, functions = ?types, "serving stateful functions");
    let app = Router::new()
        .route("/", post(invoke))
        .route("/{*path}", post(invoke))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(Arc::new(functions));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Logs to stderr for a function service's `main`: the filter from `RUST_LOG` when it is set,
/// else `default_filter` (e.g. `"info"`). Call it once, before anything logs.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// Binds `listen` and serves `functions` until Ctrl-C or SIGTERM ([`shutdown_signal`]): the
/// whole `main` of a function service, after its logging is set up.
pub async fn serve_until_signal(
    listen: std::net::SocketAddr,
    functions: StatefulFunctions,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    serve(listener, functions, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` and the playthrough scripts send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

async fn invoke(State(functions): State<Arc<StatefulFunctions>>, body: Bytes) -> Response {
    // Handlers that may block (declared with `with_blocking_handlers`) run on tokio's
    // blocking pool, never on the threads that serve connections; others run right here.
    let outcome = if functions.handlers_may_block() {
        match tokio::task::spawn_blocking(move || functions.handle(&body)).await {
            Ok(outcome) => outcome,
            Err(join) => {
                tracing::error!("a handler panicked: {join}");
                return (StatusCode::INTERNAL_SERVER_ERROR, "the handler panicked").into_response();
            }
        }
    } else {
        functions.handle(&body)
    };
    match outcome {
        Ok(answer) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response()
        }
        Err(err) => {
            let status = StatusCode::from_u16(err.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            tracing::warn!(%status, "request failed: {err}");
            (status, err.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use keyflow_protocol::reqreply::to_function::{Invocation, InvocationBatchRequest, Request};
    use keyflow_protocol::{FromFunction, Message as _, ToFunction};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;
    use crate::{Context, Error, FunctionSpec, Message, TypeName};

    const ECHO: TypeName = TypeName::new("com.example", "echo");

    fn echo(ctx: &mut Context, msg: Message) -> Result<(), Error> {
        match msg.as_string()?.as_str() {
            "panic" => panic!("told to panic"),
            "block" => std::thread::sleep(std::time::Duration::from_millis(800)),
            _ => {}
        }
        ctx.send(ctx.self_address().clone(), msg);
        Ok(())
    }

    fn body(argument: &str) -> Vec<u8> {
        let batch = InvocationBatchRequest {
            target: Some(ECHO.address("1")),
            state: vec![],
            invocations: vec![Invocation {
                caller: None,
                argument: Some(Message::string(argument).into()),
            }],
        };
        ToFunction {
            request: Some(Request::Invocation(batch)),
        }
        .encode_to_vec()
    }

    /// One HTTP/1.1 request on a fresh connection: (status, body).
    async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = raw[split + 4..].to_vec();
        (status, body)
    }

    #[tokio::test]
    async fn a_panicking_function_answers_500_and_the_server_keeps_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let functions = StatefulFunctions::new().with(FunctionSpec::new(ECHO), echo);
        let server = tokio::spawn(serve(listener, functions, async {
            let _ = stopped.await;
        }));

        let (status, text) = post(addr, "/", &body("panic")).await;
        assert_eq!(status, 500);
        assert_eq!(
            String::from_utf8_lossy(&text),
            "function com.example/echo/1 panicked: told to panic"
        );

        let (status, answer) = post(addr, "/echo", &body("hi")).await;
        assert_eq!(status, 200);
        assert!(FromFunction::decode(answer.as_slice())
            .unwrap()
            .response
            .is_some());

        assert_eq!(post(addr, "/", b"not protobuf \xff").await.0, 400);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// On a one-thread runtime, a handler declared as blocking holds up no other request.
    #[tokio::test(flavor = "current_thread")]
    async fn blocking_handlers_do_not_hold_up_other_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let functions = StatefulFunctions::new()
            .with_blocking_handlers()
            .with(FunctionSpec::new(ECHO), echo);
        let server = tokio::spawn(serve(listener, functions, async {
            let _ = stopped.await;
        }));

        let started = std::time::Instant::now();
        let slow = tokio::spawn(async move { post(addr, "/", &body("block")).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (status, _) = post(addr, "/", &body("hi")).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(700),
            "the quick request waited for the blocking one: {:?}",
            started.elapsed()
        );
        assert!(!slow.is_finished(), "the blocking request is still running");
        assert_eq!(slow.await.unwrap().0, 200);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
