# driftloop, dev: one replica of everything, short retention, small quotas.

locals {
  environment     = "dev"
  airflow_release = "airflow"

  tags = merge(var.tags, {
    "driftloop/environment" = local.environment
    "driftloop/managed-by"  = "terraform"
  })

  irsa = "eks.amazonaws.com/role-arn"

  # Serving pods use a workload identity when their service account gets one;
  # otherwise the S3 keys in the driftloop-serving Secret.
  serving_service_account_annotations = merge(
    var.iam_role_arns.serving == null ? {} : { (local.irsa) = var.iam_role_arns.serving },
    var.serving_service_account_annotations,
  )
  serving_workload_identity = length(local.serving_service_account_annotations) > 0
}

module "object_store" {
  source = "../../modules/object-store"

  name_prefix       = var.name_prefix
  kms_key_arn       = var.kms_key_arn
  access_log_bucket = var.access_log_bucket

  # A week of undo for overwritten or VACUUMed files is plenty for dev data.
  noncurrent_version_expiration_days     = 7
  noncurrent_versions_to_keep            = 1
  abort_incomplete_multipart_upload_days = 2
  reports_expiration_days                = 30

  # Still false in dev: destroying the stack should not be how a lake is lost.
  force_destroy = false
  tags          = local.tags
}

module "k8s_namespaces" {
  source = "../../modules/k8s-namespaces"

  airflow_worker_service_account = module.airflow.worker_service_account_name

  service_account_annotations = {
    mlflow       = { (local.irsa) = var.iam_role_arns.mlflow }
    spark_driver = { (local.irsa) = var.iam_role_arns.spark_driver }
    serving      = local.serving_service_account_annotations
  }

  resource_quotas = {
    airflow    = { requests_cpu = "4", requests_memory = "8Gi", limits_cpu = "8", limits_memory = "16Gi", pods = 30 }
    mlflow     = { requests_cpu = "1", requests_memory = "2Gi", limits_cpu = "2", limits_memory = "4Gi", pods = 4 }
    serving    = { requests_cpu = "2", requests_memory = "4Gi", limits_cpu = "4", limits_memory = "8Gi", pods = 10 }
    spark_jobs = { requests_cpu = "6", requests_memory = "24Gi", limits_cpu = "12", limits_memory = "32Gi", pods = 20 }
  }

  kube_api_cidrs                = var.kube_api_cidrs
  postgres_cidrs                = var.postgres_cidrs
  https_egress_cidrs            = var.https_egress_cidrs
  gateway_dataplane_namespaces  = var.gateway_dataplane_namespaces
  airflow_ui_ingress_namespaces = var.airflow_ui_ingress_namespaces
  prometheus = {
    namespace  = var.prometheus.namespace
    pod_labels = var.prometheus.pod_labels
    port       = var.prometheus.port
  }
  labels = { "driftloop/environment" = local.environment }
}

module "mlflow" {
  source = "../../modules/mlflow"

  namespace                 = module.k8s_namespaces.namespaces["mlflow"]
  service_account_name      = module.k8s_namespaces.mlflow_service_account_name
  image_repository          = var.mlflow_image.repository
  image_tag                 = var.mlflow_image.tag
  backend_store_secret_name = var.mlflow_backend_store_secret_name
  artifacts_destination     = "${module.object_store.artifacts_uri}/mlflow"
  replicas                  = 1
  extra_env                 = { AWS_DEFAULT_REGION = var.aws_region }
}

module "airflow" {
  source = "../../modules/airflow"

  release_name     = local.airflow_release
  namespace        = module.k8s_namespaces.namespaces["airflow"]
  chart_version    = var.airflow_chart_version
  airflow_version  = var.airflow_version
  image_repository = var.airflow_image.repository
  image_tag        = var.airflow_image.tag

  metadata_secret_name       = var.airflow_secret_names.metadata_connection
  fernet_key_secret_name     = var.airflow_secret_names.fernet_key
  api_secret_key_secret_name = var.airflow_secret_names.api_secret_key
  jwt_secret_name            = var.airflow_secret_names.jwt_secret

  service_account_annotations = { (local.irsa) = var.iam_role_arns.airflow }
  remote_base_log_folder      = "${module.object_store.reports_uri}/airflow-logs"

  extra_env = {
    DRIFTLOOP_PROFILE                    = "kubernetes"
    DRIFTLOOP_LAKE_ROOT                  = replace(module.object_store.lake_uri, "s3://", "s3a://")
    DRIFTLOOP_MLFLOW_TRACKING_URI        = module.mlflow.tracking_uri
    AWS_DEFAULT_REGION                   = var.aws_region
    DRIFTLOOP_SPARK_JOB__NAMESPACE       = module.k8s_namespaces.namespaces["spark_jobs"]
    DRIFTLOOP_SPARK_JOB__SERVICE_ACCOUNT = module.k8s_namespaces.spark_driver_service_account_name
    DRIFTLOOP_SPARK_JOB__IMAGE           = "${var.spark_job_image.repository}:${var.spark_job_image.tag}"
    # the spark-driver service account reaches S3 through IRSA: no key Secret for Spark
    DRIFTLOOP_SPARK_JOB__S3_CREDENTIALS_SECRET = ""

    DRIFTLOOP_SERVING__NAMESPACE         = module.k8s_namespaces.namespaces["serving"]
    DRIFTLOOP_SERVING__IMAGE             = "${var.serving_image.repository}:${var.serving_image.tag}"
    DRIFTLOOP_SERVING__SERVICE_ACCOUNT   = module.k8s_namespaces.serving_service_account_name
    DRIFTLOOP_SERVING__WORKLOAD_IDENTITY = tostring(local.serving_workload_identity)
    # the route the deploy target creates must attach to the Gateway listener Terraform made
    DRIFTLOOP_SERVING__GATEWAY           = module.serving_gateway.gateway_name
    DRIFTLOOP_SERVING__GATEWAY_NAMESPACE = module.serving_gateway.namespace
    DRIFTLOOP_SERVING__GATEWAY_LISTENER  = module.serving_gateway.listener_name
    DRIFTLOOP_SERVING__HOSTNAME          = var.serving_hostname
    DRIFTLOOP_SERVING__PROMETHEUS_URL    = var.prometheus.url
  }

  # Settings that hold a password: by reference to a pre-created Secret, never
  # as values in Terraform's state.
  env_value_from = {
    DRIFTLOOP_REGISTRY_LOCK_DSN = {
      secret_name = var.driftloop_secret_names.secret_name
      key         = var.driftloop_secret_names.registry_lock_dsn_key
    }
    DRIFTLOOP_OPTUNA_STORAGE = {
      secret_name = var.driftloop_secret_names.secret_name
      key         = var.driftloop_secret_names.optuna_storage_key
    }
  }
}

module "serving_gateway" {
  source = "../../modules/serving-gateway"

  namespace          = module.k8s_namespaces.namespaces["serving"]
  gateway_class_name = var.gateway_class_name
  listener = {
    hostname        = var.serving_hostname
    tls_secret_name = var.serving_tls_secret_name
  }
  # No route here: deploy_model's Kubernetes target creates and owns the
  # weighted HTTPRoute (see the module's main.tf for why).
}
