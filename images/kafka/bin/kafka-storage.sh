#!/bin/sh
# apache/kafka's `kafka-storage.sh`: the KRaft storage tool on the image's jars.
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="${KAFKA_HOME:-/opt/kafka}/config/log4j2.properties" \
  -cp "${KAFKA_HOME:-/opt/kafka}/libs/*" kafka.tools.StorageTool "$@"
