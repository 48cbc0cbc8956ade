#!/usr/bin/env bash
# Fetches (or reuses) Apache Kafka's jars from Maven Central, for the Kafka tests (tests/kafka.rs):
# the broker (`kafka.Kafka`, KRaft, no ZooKeeper), its storage tool and the command-line tools
# (`kafka-consumer-groups.sh`'s ConsumerGroupCommand, the console producer and consumer). Java 17
# comes from the machine; there is nothing to build.
#
#   scripts/kafka.sh install    the jars into the cache; prints the directory holding them
#
# Cached in ${LEVEE_CACHE:-$HOME/.cache/levee}/kafka-<version> (92 jars, 54 MB; from an empty
# Maven repository the fetch took 5.5 s here, 79 MB downloaded; scripts/prebuild.sh starts it at
# the beginning of `make test`), Maven's own downloads in ~/.m2.
set -euo pipefail

KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.25.5
DEPENDENCY_PLUGIN=3.8.1

install() {
  local cache dir tmp start
  cache="${LEVEE_CACHE:-$HOME/.cache/levee}"
  dir="$cache/kafka-$KAFKA_VERSION"
  mkdir -p "$cache"
  exec 9>"$cache/kafka.lock"
  flock 9
  if [[ ! -f "$dir/complete" ]]; then
    echo "kafka: fetching $KAFKA_VERSION's jars from Maven Central" >&2
    start=$SECONDS
    rm -rf "$dir"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    cat >"$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.levee</groupId>
  <artifactId>kafka-test-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
    mvn -q -B -f "$tmp/pom.xml" \
      "org.apache.maven.plugins:maven-dependency-plugin:$DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >&2
    cat >"$tmp/log4j2.properties" <<'LOG'
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.kafkaserver.name = kafka
logger.kafkaserver.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
LOG
    mkdir -p "$dir"
    mv "$tmp/libs" "$tmp/log4j2.properties" "$dir/"
    touch "$dir/complete"
    echo "kafka: fetched in $((SECONDS - start))s" >&2
  fi
  exec 9>&-
  echo "$dir"
}

case "${1:-}" in
  install) install ;;
  *)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
