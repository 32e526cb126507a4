variable "environment" {
  type        = string
  description = "\"staging\" or \"production\": names every resource gantry-<environment> and tags monitors and releases."

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment is staging or production."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every AWS resource (the root also sets them as the provider's default tags)."
  default     = {}
}

variable "network" {
  type = object({
    cidr_block         = string
    single_nat_gateway = bool
  })
  description = "The environment's own VPC range, and whether one NAT gateway serves every zone (cheaper) instead of one per zone (highly available)."
}

variable "availability_zones" {
  type        = list(string)
  description = "The three availability zones the network, nodes and database span."
}

variable "api_access_cidrs" {
  type        = list(string)
  description = "CIDR ranges (VPN, CI egress) allowed to reach the Kubernetes API endpoint; empty keeps it private."
  default     = []
}

variable "node_groups" {
  # Passed as given to the cluster module, whose node_groups variable types and validates it.
  type        = any
  description = "Managed node groups by name, as the cluster module's node_groups: instance_types, min/max/desired_size and optionally capacity_type, disk_size_gb, labels."
}

variable "database" {
  type = object({
    instance_class           = string
    allocated_storage_gb     = number
    max_allocated_storage_gb = number
    multi_az                 = bool
    deletion_protection      = bool
    backup_retention_days    = number
  })
  description = "Size, availability and backups of the environment's own PostgreSQL instance; the database module refuses a production one that is not multi-AZ and deletion-protected."
}

variable "prefect" {
  type = object({
    server_replicas = number
    worker_replicas = number
  })
  description = "Replicas of the Prefect API server and of the worker polling the work pool."
}

variable "page_on_call" {
  type        = bool
  description = "Route P1 and P2 alerts to PagerDuty; false makes every alert only notify."
}

variable "gantry_image_tag" {
  type        = string
  description = "Immutable tag of Gantry's image in the registry to run as worker and receiver."
}

variable "webhook_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding the GitHub webhook secret (created outside Terraform so the value never enters the code)."
}

variable "runbook_base_url" {
  type        = string
  description = "Web URL of docs/runbooks in Gantry's repository, linked from every monitor."
}

variable "notify_handles" {
  type        = list(string)
  description = "Datadog handles every alert notifies, e.g. [\"@slack-platform-alerts\"]."
}

variable "escalation_schedule_ids" {
  type        = list(string)
  description = "PagerDuty schedule IDs in escalation order (primary, secondary)."
}

variable "provenance_signing_key_secret_arn" {
  type        = string
  description = "Secrets Manager secret whose string is the PEM ECDSA P-256 key that signs each pushed image's provenance (passed to the prefect module, which makes it the gantry-provenance-signing-key Secret). Null: nothing signs, so no release verifies."
  default     = null
}

variable "provenance_trusted_public_keys" {
  type        = map(string)
  description = "PEM public keys releases trust to have signed provenance, by file name <keyid>.pub (the hex SHA-256 of the DER key): one, or two while the signing key is rotated."
  default     = {}

  validation {
    condition = alltrue([
      for name, pem in var.provenance_trusted_public_keys :
      can(regex("^[0-9a-f]{64}\\.pub$", name)) && startswith(trimspace(pem), "-----BEGIN PUBLIC KEY-----")
    ])
    error_message = "Each trusted key is named <keyid>.pub (64 lowercase hex digits) and holds one PEM public key (-----BEGIN PUBLIC KEY-----), never a private key."
  }
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
