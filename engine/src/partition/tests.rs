//! Unit tests of the partition core (no Kafka).
