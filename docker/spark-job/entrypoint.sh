#!/bin/bash
# Entry point of the driftloop Spark job image, modelled on Apache Spark's Kubernetes image:
#   executor   what Spark's Kubernetes scheduler passes to executor pods: runs the executor
#              backend, configured by the SPARK_* variables Spark sets on the pod
#   driver     what `spark-submit --deploy-mode cluster` passes to a driver pod: spark-submit in
#              client mode inside the pod, with the remaining arguments
#   anything else runs as given (the feature job's driver pod runs `driftloop features ...`)
# Everything runs under tini, so the Python workers Spark forks are reaped.
set -euo pipefail

spark_classpath="${SPARK_HOME}/jars/*"
if [[ -n "${SPARK_EXTRA_CLASSPATH:-}" ]]; then
    spark_classpath="${spark_classpath}:${SPARK_EXTRA_CLASSPATH}"
fi
# Spark puts the executor's JVM options in SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...
executor_java_opts=()
for name in $(compgen -v SPARK_JAVA_OPT_ | sort -t_ -k4 -n); do
    executor_java_opts+=("${!name}")
done

case "${1:-}" in
    executor)
        shift
        exec /usr/bin/tini -s -- "${JAVA_HOME}/bin/java" \
            "${executor_java_opts[@]}" \
            -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
            -cp "${spark_classpath}:${PWD}" \
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
            --driver-url "${SPARK_DRIVER_URL}" \
            --executor-id "${SPARK_EXECUTOR_ID}" \
            --cores "${SPARK_EXECUTOR_CORES}" \
            --app-id "${SPARK_APPLICATION_ID}" \
            --hostname "${SPARK_EXECUTOR_POD_IP}" \
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
            --podName "${SPARK_EXECUTOR_POD_NAME}" \
            "$@"
        ;;
    driver)
        shift
        exec /usr/bin/tini -s -- "${SPARK_HOME}/bin/spark-submit" \
            --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
            --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
            --deploy-mode client \
            "$@"
        ;;
    *)
        exec /usr/bin/tini -s -- "$@"
        ;;
esac
