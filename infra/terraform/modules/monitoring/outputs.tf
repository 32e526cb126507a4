output "monitor_ids" {
  description = "Datadog monitor IDs by name in this module (api_error_rate, llm_latency, database_cpu, webhook_backlog, pipeline_failure_rate, release_failed, worker_not_polling)."
  value = {
    api_error_rate        = datadog_monitor.api_error_rate.id
    llm_latency           = datadog_monitor.llm_latency.id
    database_cpu          = datadog_monitor.database_cpu.id
    webhook_backlog       = datadog_monitor.webhook_backlog.id
    pipeline_failure_rate = datadog_monitor.pipeline_failure_rate.id
    release_failed        = datadog_monitor.release_failed.id
    worker_not_polling    = datadog_monitor.worker_not_polling.id
  }
}

output "pagerduty_service_ids" {
  description = "PagerDuty service IDs by priority (p1, p2)."
  value       = { for priority, service in pagerduty_service.this : priority => service.id }
}

output "escalation_policy_id" {
  description = "PagerDuty escalation policy that both services page through."
  value       = pagerduty_escalation_policy.this.id
}
