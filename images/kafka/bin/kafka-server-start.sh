#!/bin/sh
# apache/kafka's `kafka-server-start.sh <server.properties>`: the node in the foreground, with the
# JVM settings the local runtime's broker uses (gyre.pipelines.kafka.broker.broker_command).
exec java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="${KAFKA_HOME:-/opt/kafka}/config/log4j2.properties" \
  ${KAFKA_OPTS:-} -cp "${KAFKA_HOME:-/opt/kafka}/libs/*" kafka.Kafka "$@"
