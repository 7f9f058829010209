package keyflow.conformance;

import io.undertow.Undertow;
import org.apache.flink.statefun.sdk.java.StatefulFunctions;

/**
 * The Java conformance service: the {@code java/*} conformance functions and the {@code
 * com.example/*} shopping cart, written with the official StateFun Java SDK and served with
 * Undertow on 127.0.0.1:$PORT.
 */
public final class Main {
  private Main() {}

  public static void main(String[] args) {
    StatefulFunctions functions = new StatefulFunctions();
    Conformance.register(functions);
    ShoppingCart.register(functions);

    int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8000"));
    Undertow server =
        Undertow.builder()
            .addHttpListener(port, "127.0.0.1")
            .setHandler(new StatefunHttpHandler(functions.requestReplyHandler()))
            .build();
    server.start();
    System.out.println("listening on 127.0.0.1:" + port);
  }
}
