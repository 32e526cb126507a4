locals {
  ha          = var.server_replicas > 1
  server_name = "prefect-server"
  # In-cluster address of the Prefect API, used by the worker and the webhook receiver.
  api_url  = "http://${local.server_name}.${var.namespace}.svc.cluster.local:4200/api"
  labels   = merge(var.tags, { "app.kubernetes.io/part-of" = "gantry", "gantry.dev/environment" = var.environment })
  database = jsondecode(data.aws_secretsmanager_secret_version.database.secret_string)
}

resource "kubernetes_namespace_v1" "gantry" {
  metadata {
    name   = var.namespace
    labels = local.labels
  }
}

data "aws_secretsmanager_secret_version" "database" {
  secret_id = var.database_secret_arn
}

data "aws_secretsmanager_secret_version" "webhook" {
  secret_id = var.webhook_secret_arn
}

# The chart reads the whole connection URL from this Secret; the password never appears in values.
resource "kubernetes_secret_v1" "database" {
  metadata {
    name      = "prefect-database"
    namespace = kubernetes_namespace_v1.gantry.metadata[0].name
    labels    = local.labels
  }

  data = {
    connection-string = format(
      "postgresql+asyncpg://%s:%s@%s:%d/%s",
      urlencode(local.database.username),
      urlencode(local.database.password),
      var.database_host,
      var.database_port,
      var.database_name,
    )
  }
}

# The Prefect API's credential (HTTP Basic, "user:password"): the server requires it on every
# call but /api/health and /api/ready, the worker, its flow runs and the webhook receiver send it,
# and the UI asks for it at login (read it with
# kubectl -n <namespace> get secret prefect-api-auth -o jsonpath='{.data.auth-string}').
resource "random_password" "prefect_api" {
  length  = 40
  special = false
}

resource "kubernetes_secret_v1" "prefect_auth" {
  metadata {
    name      = "prefect-api-auth"
    namespace = kubernetes_namespace_v1.gantry.metadata[0].name
    labels    = local.labels
  }

  data = {
    # The key both Prefect charts read (server.basicAuth, worker.basicAuth).
    auth-string = "gantry:${random_password.prefect_api.result}"
  }
}

resource "helm_release" "server" {
  name       = local.server_name
  namespace  = kubernetes_namespace_v1.gantry.metadata[0].name
  repository = var.chart_repository
  chart      = "prefect-server"
  version    = var.chart_version
  wait       = true
  timeout    = 600

  values = [yamlencode({
    fullnameOverride = local.server_name
    postgresql       = { enabled = false }
    externalDatabase = {
      existingSecret            = kubernetes_secret_v1.database.metadata[0].name
      connectionStringSecretKey = "connection-string"
    }
    redis = { enabled = local.ha }
    server = {
      replicaCount = var.server_replicas
      # PREFECT_SERVER_API_AUTH_STRING from the Secret; the UI then prompts for it.
      basicAuth = {
        enabled        = true
        existingSecret = kubernetes_secret_v1.prefect_auth.metadata[0].name
      }
      env = [
        { name = "PREFECT_SERVER_ANALYTICS_ENABLED", value = "false" },
      ]
      resources = {
        requests = { cpu = "500m", memory = "1Gi" }
        limits   = { cpu = "1", memory = "2Gi" }
      }
    }
    backgroundServices = { runAsSeparateDeployment = local.ha }
  })]
}

resource "helm_release" "worker" {
  name       = "prefect-worker"
  namespace  = kubernetes_namespace_v1.gantry.metadata[0].name
  repository = var.chart_repository
  chart      = "prefect-worker"
  version    = var.chart_version
  wait       = true

  values = [yamlencode({
    fullnameOverride = "prefect-worker"
    worker = {
      replicaCount = var.worker_replicas
      apiConfig    = "selfHostedServer"
      # Gantry's image has tini but not the entrypoint script of Prefect's own image.
      command                   = ["/usr/bin/tini", "-g", "--"]
      selfHostedServerApiConfig = { apiUrl = local.api_url }
      # PREFECT_API_AUTH_STRING from the server's Secret; Prefect hands it on to each flow run.
      basicAuth = {
        enabled        = true
        existingSecret = kubernetes_secret_v1.prefect_auth.metadata[0].name
      }
      # Instead of the chart's `prefect worker start`: Gantry's warm worker (gantry-warm,
      # deployments/warm/) plus the gantry.worker.heartbeat count (one per successful poll)
      # that the worker-not-polling monitor watches (deployments/worker.py). Flow runs start
      # in this pod, each in an interpreter that has already imported Prefect and the
      # pipelines; their steps run in pods of their own (the steps namespace), so the flow
      # process holds no untrusted code. The chart mounts the base job template in the
      # working directory.
      args = [
        "python", "-m", "deployments.worker",
        "--type", "warm",
        "--pool", var.work_pool_name,
        "--base-job-template", "baseJobTemplate.json",
        "--warm-size", tostring(var.warm_interpreters),
      ]
      # Flow runs need what a flow-run Job had: the deployer's rights (step pods, deploys),
      # writable scratch space, the release policy and the provenance keys.
      resources = {
        requests = { cpu = "500m", memory = "1Gi" }
        limits   = { cpu = "2", memory = "4Gi" }
      }
      extraVolumes = [
        { name = "tmp", emptyDir = { sizeLimit = "10Gi" } },
        { name = "home", emptyDir = { sizeLimit = "1Gi" } },
        { name = "release-policy", secret = { secretName = "gantry-release-policy", optional = true, defaultMode = 292 } },
        { name = "provenance-signing-key", secret = { secretName = "gantry-provenance-signing-key", optional = true, defaultMode = 288 } },
        { name = "provenance-trusted-keys", configMap = { name = "gantry-provenance-trusted-keys", optional = true, defaultMode = 292 } },
      ]
      extraVolumeMounts = [
        { name = "tmp", mountPath = "/tmp" },
        { name = "home", mountPath = "/home/gantry" },
        { name = "release-policy", mountPath = "/etc/gantry/release-policy", readOnly = true },
        { name = "provenance-signing-key", mountPath = "/etc/gantry/provenance-signing", readOnly = true },
        { name = "provenance-trusted-keys", mountPath = "/etc/gantry/provenance-trusted-keys", readOnly = true },
      ]
      image = {
        repository = var.gantry_image_repository
        prefectTag = var.gantry_image_tag
        pullPolicy = "IfNotPresent"
      }
      config = {
        type          = "gantry-warm"
        workPool      = var.work_pool_name
        installPolicy = "never"
        baseJobTemplate = {
          configuration = file(var.base_job_template_path)
        }
      }
      extraEnvVars = [
        { name = "PREFECT_SERVER_ANALYTICS_ENABLED", value = "false" },
        { name = "GANTRY_ENVIRONMENT", value = var.environment },
        # The heartbeat goes to the Datadog agent on this node; DD_ENV becomes its env tag.
        { name = "DD_AGENT_HOST", valueFrom = { fieldRef = { fieldPath = "status.hostIP" } } },
        { name = "DD_DOGSTATSD_PORT", value = "8125" },
        { name = "DD_ENV", value = var.environment },
      ]
    }
    # The deployer's service account (infra/k8s/base/deployer-rbac.yaml), as flow-run Jobs had.
    serviceAccount = { create = false, name = var.flow_run_service_account }
  })]

  depends_on = [helm_release.server]
}

# Gantry's webhook receiver: its Deployment, Service, Ingress, autoscaler and disruption budget
# come from infra/k8s (kustomize overlays). This module provides what those manifests read,
# so the secret reaches the cluster from Secrets Manager and never from a file in the repository.
resource "kubernetes_secret_v1" "webhook" {
  metadata {
    name      = "gantry-webhook"
    namespace = kubernetes_namespace_v1.gantry.metadata[0].name
    labels    = local.labels
  }

  data = {
    GANTRY_WEBHOOK_SECRET = data.aws_secretsmanager_secret_version.webhook.secret_string
    # The delivery store every replica shares: the database module's PostgreSQL (its own
    # tables, gantry_webhook_*). Without it each pod would keep an SQLite file on an emptyDir
    # that a rollout deletes, acknowledged deliveries with it.
    GANTRY_WEBHOOK_STORE = format(
      "postgresql://%s:%s@%s:%d/%s",
      urlencode(local.database.username),
      urlencode(local.database.password),
      var.database_host,
      var.database_port,
      var.database_name,
    )
  }
}

resource "kubernetes_config_map_v1" "receiver" {
  metadata {
    name      = "gantry-receiver"
    namespace = kubernetes_namespace_v1.gantry.metadata[0].name
    labels    = local.labels
  }

  data = {
    PREFECT_API_URL                  = local.api_url
    PREFECT_SERVER_ANALYTICS_ENABLED = "false"
    DO_NOT_TRACK                     = "1"
    GANTRY_ENVIRONMENT               = var.environment
    DD_ENV                           = var.environment
    # The receiver refuses to start without its allowlist: deliveries of others start nothing.
    GANTRY_WEBHOOK_REPOSITORIES = join(",", var.webhook_repositories)
    # The most replicas the autoscaler may run: above one, the receiver refuses to start on
    # anything but the shared PostgreSQL store (GANTRY_WEBHOOK_STORE, from the Secret).
    GANTRY_WEBHOOK_REPLICAS = tostring(var.receiver_max_replicas)
  }
}

# Supply chain: the key that signs each pushed image's provenance lives in Secrets Manager and
# reaches the cluster only as this Secret (mounted read-only into flow runs, never the steps'
# namespace); the public keys releases trust are not secret and travel as a ConfigMap.
data "aws_secretsmanager_secret_version" "provenance_signing_key" {
  count     = var.provenance_signing_key_secret_arn == null ? 0 : 1
  secret_id = var.provenance_signing_key_secret_arn
}

resource "kubernetes_secret_v1" "provenance_signing_key" {
  count = var.provenance_signing_key_secret_arn == null ? 0 : 1
  metadata {
    name      = "gantry-provenance-signing-key"
    namespace = kubernetes_namespace_v1.gantry.metadata[0].name
    labels    = local.labels
  }

  data = {
    "provenance-signing.pem" = data.aws_secretsmanager_secret_version.provenance_signing_key[0].secret_string
  }
}

resource "kubernetes_config_map_v1" "provenance_trusted_keys" {
  metadata {
    name      = "gantry-provenance-trusted-keys"
    namespace = kubernetes_namespace_v1.gantry.metadata[0].name
    labels    = local.labels
  }

  data = var.provenance_trusted_public_keys
}
