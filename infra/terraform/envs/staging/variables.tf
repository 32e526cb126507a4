variable "region" {
  type        = string
  description = "AWS region of the environment."
  default     = "eu-west-1"
}

variable "availability_zones" {
  type        = list(string)
  description = "The three availability zones the network, nodes and database span."
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "api_access_cidrs" {
  type        = list(string)
  description = "CIDR ranges (VPN, CI egress) allowed to reach the Kubernetes API endpoint; empty keeps it private."
  default     = []
}

variable "gantry_image_tag" {
  type        = string
  description = "Immutable tag of Gantry's image in the registry to run as worker and receiver."
}

variable "webhook_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding the GitHub webhook secret (created outside Terraform so the value never enters the code)."
}

variable "provenance_signing_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding the PEM key that signs image provenance (created outside Terraform so the key never enters the code; docs/runbooks/provenance-keys.md). The public keys releases trust are the committed provenance-trusted-keys/*.pub files."
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

variable "datadog_api_key" {
  type        = string
  description = "Datadog API key (TF_VAR_datadog_api_key); never written in a file."
  sensitive   = true
}

variable "datadog_app_key" {
  type        = string
  description = "Datadog application key (TF_VAR_datadog_app_key); never written in a file."
  sensitive   = true
}

variable "datadog_api_url" {
  type        = string
  description = "Datadog API URL of the account's site."
  default     = "https://api.datadoghq.com/"
}

variable "pagerduty_token" {
  type        = string
  description = "PagerDuty REST API token (TF_VAR_pagerduty_token); never written in a file."
  sensitive   = true
}

variable "webhook_repositories" {
  type        = list(string)
  description = "Repositories (owner/name) or organizations (owner/*) the receiver serves; [\"*\"] serves all."
}
