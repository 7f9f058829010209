// In StateFun's package: StatefulFunctionsUniverses.ClassPathUniverseProvider (what
// StatefulFunctionsJob's own main uses) is package-private.
package org.apache.flink.statefun.flink.core;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * Runs the Apache Flink StateFun 3.3 runtime (StatefulFunctionsJob, unchanged) on a local Flink
 * MiniCluster in this JVM, with the remote module read from a module.yaml file.
 *
 * <p>Usage: {@code StateFunLauncher <module.yaml> <checkpoint interval, e.g. 10s> <work dir>}.
 * The Flink settings are those of StateFun's own distribution (tools/docker flink-conf.yaml):
 * parent-first class loading of StateFun, Kafka and protobuf, RocksDB state with incremental
 * checkpoints; plus the checkpoint interval, which is also when the exactly-once Kafka egress
 * commits its transaction (receipts become visible to read_committed consumers only then).
 * Parallelism: STATEFUN_PARALLELISM (default 2, the machine's cores).
 */
public final class StateFunLauncher {
  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: StateFunLauncher <module.yaml> <checkpoint-interval> <work-dir>");
      System.exit(2);
    }
    String module = new java.io.File(args[0]).getAbsoluteFile().toURI().toString();
    String work = new java.io.File(args[2]).getAbsoluteFile().toURI().toString();
    Configuration conf = new Configuration();
    conf.setString("classloader.parent-first-patterns.additional",
        "org.apache.flink.statefun;org.apache.kafka;com.google.protobuf");
    conf.setString("state.backend", "rocksdb");
    conf.setString("state.backend.incremental", "true");
    conf.setString("state.checkpoints.dir", work + "checkpoints");
    conf.setString("state.backend.rocksdb.localdir", args[2] + "/rocksdb");
    conf.setString("execution.checkpointing.interval", args[1]);
    conf.setString("execution.checkpointing.mode", "EXACTLY_ONCE");
    conf.setString("restart-strategy", "fixed-delay");
    conf.setString("restart-strategy.fixed-delay.attempts", "2147483647");
    conf.setString("restart-strategy.fixed-delay.delay", "1sec");
    conf.setString("pipeline.auto-generate-uids", "false");
    conf.setString("statefun.remote.module-name", module);
    conf.setString("statefun.flink-job-name", "shopping-cart");
    conf.setString("taskmanager.memory.network.fraction", "0.1");
    int parallelism = Integer.parseInt(System.getenv().getOrDefault("STATEFUN_PARALLELISM", "2"));

    StreamExecutionEnvironment env =
        StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
    StatefulFunctionsConfig stateFun = StatefulFunctionsConfig.fromFlinkConfiguration(conf);
    stateFun.setProvider(new StatefulFunctionsUniverses.ClassPathUniverseProvider());
    System.out.println("starting StateFun 3.3 on a local MiniCluster: module " + module
        + ", checkpoint interval " + args[1] + ", parallelism " + parallelism);
    StatefulFunctionsJob.main(env, stateFun);
  }
}
