variable "environment" {
  type        = string
  description = "\"staging\" or \"production\": the env tag every monitor filters on."

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment is staging or production."
  }
}

variable "page_on_call" {
  type        = bool
  description = "Route P1 and P2 alerts to PagerDuty. Off in staging, where every alert only notifies."
  default     = true
}

variable "api_service" {
  type        = string
  description = "APM service name of the platform's public API (the P1 error-rate monitor)."
  default     = "api"
}

variable "llm_latency_metric" {
  type        = string
  description = "Gauge of the platform's LLM API call latency, in seconds (the P2 latency monitor)."
  default     = "llm.api.latency"
}

variable "database_identifiers" {
  type        = list(string)
  description = "RDS instance identifiers watched by the P3 database CPU monitor."
}

variable "work_pool_name" {
  type        = string
  description = "Work pool whose worker heartbeat the worker-not-polling monitor watches."
  default     = "gantry-kubernetes"
}

variable "webhook_backlog_threshold" {
  type        = number
  description = "Undispatched webhook deliveries above which the backlog monitor alerts."
  default     = 50
}

variable "pipeline_failure_rate_threshold" {
  type        = number
  description = "Percentage of failed merge pipeline runs over an hour above which the failure-rate monitor alerts."
  default     = 30
}

variable "runbook_base_url" {
  type        = string
  description = "URL of docs/runbooks in the repository's web view; every monitor message links its runbook under it."

  validation {
    condition     = startswith(var.runbook_base_url, "https://")
    error_message = "runbook_base_url is an https URL."
  }
}

variable "notify_handles" {
  type        = list(string)
  description = "Datadog notification handles (e.g. \"@slack-platform-alerts\") that every alert notifies; P3 alerts notify only these."

  validation {
    condition     = length(var.notify_handles) > 0 && alltrue([for handle in var.notify_handles : startswith(handle, "@")])
    error_message = "At least one handle, each starting with @."
  }
}

variable "escalation_schedule_ids" {
  type        = list(string)
  description = "PagerDuty on-call schedule IDs, in escalation order: primary first, then secondary."

  validation {
    condition     = length(var.escalation_schedule_ids) >= 1
    error_message = "At least the primary on-call schedule."
  }
}

variable "escalation_delay_minutes" {
  type        = number
  description = "Minutes an unacknowledged P1 incident waits before escalating to the next schedule."
  default     = 15
}

variable "tags" {
  type        = list(string)
  description = "Extra Datadog tags (key:value) on every monitor."
  default     = []
}
