package keyflow.conformance;

import io.undertow.server.HttpHandler;
import io.undertow.server.HttpServerExchange;
import io.undertow.util.Headers;
import io.undertow.util.StatusCodes;
import org.apache.flink.statefun.sdk.java.handler.RequestReplyHandler;
import org.apache.flink.statefun.sdk.java.slice.Slice;
import org.apache.flink.statefun.sdk.java.slice.Slices;

/** Hands every request body to the SDK's request-reply handler and writes its answer back. */
final class StatefunHttpHandler implements HttpHandler {
  private final RequestReplyHandler handler;

  StatefunHttpHandler(RequestReplyHandler handler) {
    this.handler = handler;
  }

  @Override
  public void handleRequest(HttpServerExchange exchange) {
    exchange.getRequestReceiver().receiveFullBytes(this::onBody);
  }

  private void onBody(HttpServerExchange exchange, byte[] body) {
    // The answer may complete on another thread: keep the exchange open past this callback.
    exchange.dispatch();
    handler
        .handle(Slices.wrap(body))
        .whenComplete((reply, failure) -> answer(exchange, reply, failure));
  }

  private static void answer(HttpServerExchange exchange, Slice reply, Throwable failure) {
    if (failure != null) {
      System.err.println("invocation failed: " + failure);
      failure.printStackTrace();
      exchange.setStatusCode(StatusCodes.INTERNAL_SERVER_ERROR);
      exchange.endExchange();
      return;
    }
    exchange.getResponseHeaders().put(Headers.CONTENT_TYPE, "application/octet-stream");
    exchange.getResponseSender().send(reply.asReadOnlyByteBuffer());
  }
}
