package keyflow.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.statefun.sdk.java.TypeName;
import org.apache.flink.statefun.sdk.java.types.SimpleType;
import org.apache.flink.statefun.sdk.java.types.Type;

/** JSON message and state types (the SDK's SimpleType over Jackson). */
final class Json {
  static final ObjectMapper MAPPER = new ObjectMapper();

  private Json() {}

  /** A type whose values are Jackson trees. */
  static Type<JsonNode> tree(String typename) {
    return SimpleType.simpleTypeFrom(
        TypeName.typeNameFromString(typename), MAPPER::writeValueAsBytes, MAPPER::readTree);
  }

  /** A type whose values are instances of {@code cls}. */
  static <T> Type<T> of(String typename, Class<T> cls) {
    return SimpleType.simpleImmutableTypeFrom(
        TypeName.typeNameFromString(typename),
        MAPPER::writeValueAsBytes,
        bytes -> MAPPER.readValue(bytes, cls));
  }

  static ObjectNode object() {
    return MAPPER.createObjectNode();
  }

  static String text(JsonNode node) {
    try {
      return MAPPER.writeValueAsString(node);
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }
}
