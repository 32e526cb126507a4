variable "environment" {
  type        = string
  description = "\"staging\" or \"production\"; names releases and tags."

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment is staging or production."
  }
}

variable "namespace" {
  type        = string
  description = "Namespace for the Prefect server, the worker and Gantry's webhook receiver."
  default     = "gantry"
}

variable "chart_repository" {
  type        = string
  description = "Helm repository of the official Prefect charts."
  default     = "https://prefecthq.github.io/prefect-helm"
}

variable "chart_version" {
  type        = string
  description = "Version of the prefect-server and prefect-worker charts (they are released together)."
  default     = "2025.8.21160848"
}

variable "server_replicas" {
  type        = number
  description = "Prefect API replicas. More than one moves background services to their own Deployment and messaging to Redis, as Prefect requires."
  default     = 1

  validation {
    condition     = var.server_replicas >= 1
    error_message = "At least one server replica."
  }
}

variable "database_host" {
  type        = string
  description = "PostgreSQL host (database module output address)."
}

variable "database_port" {
  type        = number
  description = "PostgreSQL port."
  default     = 5432
}

variable "database_name" {
  type        = string
  description = "Database the Prefect server uses."
}

variable "database_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding {\"username\", \"password\"} of the database (database module output master_user_secret_arn)."
}

variable "webhook_secret_arn" {
  type        = string
  description = "Secrets Manager secret whose string is the GitHub webhook secret the receiver verifies signatures with."
}

variable "gantry_image_repository" {
  type        = string
  description = "Registry repository of Gantry's image (worker and receiver), e.g. the registry module's \"gantry\" URL."
}

variable "gantry_image_tag" {
  type        = string
  description = "Immutable tag of Gantry's image to run."
}

variable "work_pool_name" {
  type        = string
  description = "Work pool (type gantry-warm) the warm worker polls."
  default     = "gantry-kubernetes"
}

variable "base_job_template_path" {
  type        = string
  description = "Path of the work pool's base job template JSON (infra/k8s/work-pool/warm-base-job-template.json)."
}

variable "warm_interpreters" {
  type        = number
  description = "Interpreters each worker pod keeps warm (imported Prefect and the pipelines) for the next flow runs."
  default     = 2

  validation {
    condition     = var.warm_interpreters >= 1
    error_message = "At least one warm interpreter."
  }
}

variable "flow_run_service_account" {
  type        = string
  description = "Service account of the worker pods, whose flow runs start step pods and deploy (infra/k8s/base/deployer-rbac.yaml)."
  default     = "gantry-deployer"
}

variable "worker_replicas" {
  type        = number
  description = "Worker replicas; each polls the same pool."
  default     = 1
}

variable "tags" {
  type        = map(string)
  description = "Labels added to Kubernetes objects this module creates directly."
  default     = {}
}

variable "provenance_signing_key_secret_arn" {
  type        = string
  default     = null
  description = "Secrets Manager secret whose string is the PEM ECDSA P-256 key that signs image provenance; it reaches flow runs as the gantry-provenance-signing-key Secret. Null: no signing key, so no release verifies."
}

variable "provenance_trusted_public_keys" {
  type        = map(string)
  default     = {}
  description = "PEM public keys trusted to have signed provenance, by file name (<keyid>.pub): one, or two while the signing key is rotated."
}

variable "webhook_repositories" {
  type        = list(string)
  description = "Repositories (owner/name) or organizations (owner/*) whose deliveries the receiver serves; others are recorded as ignored and start nothing. [\"*\"] serves every repository, on purpose."
  validation {
    condition = length(var.webhook_repositories) > 0 && alltrue([
      for entry in var.webhook_repositories : can(regex("^(\\*|[A-Za-z0-9_.-]+/(\\*|[A-Za-z0-9_.-]+))$", entry))
    ])
    error_message = "webhook_repositories lists owner/name, owner/* or *, at least one."
  }
}

variable "receiver_max_replicas" {
  type        = number
  default     = 12
  description = "The most webhook receiver replicas the autoscaler may run (the overlays' HPA maxReplicas); above one the receiver requires the shared PostgreSQL store."
  validation {
    condition     = var.receiver_max_replicas >= 1
    error_message = "receiver_max_replicas must be at least 1."
  }
}
