# Monitors as code. The first three are the spec's examples, word for word:
#   P1 API error rate above 5% for 5 minutes
#   P2 average LLM API latency above 3 seconds for 10 minutes
#   P3 database CPU above 80%
# then Gantry's own. Each message links its runbook in docs/runbooks/.

locals {
  env = "env:${var.environment}"

  # Who hears about an alert, by priority: P1 and P2 open a PagerDuty incident (P1 high urgency,
  # P2 low) when paging is on; every priority also notifies the team's handles; P3 never pages.
  notify_handles = join(" ", var.notify_handles)
  recipients = {
    1 = var.page_on_call ? "@pagerduty-${local.pagerduty_services.p1.name} ${local.notify_handles}" : local.notify_handles
    2 = var.page_on_call ? "@pagerduty-${local.pagerduty_services.p2.name} ${local.notify_handles}" : local.notify_handles
    3 = local.notify_handles
  }

  common_tags = concat(["service:gantry-monitors", local.env], var.tags)
  databases   = join(" OR ", [for id in var.database_identifiers : "dbinstanceidentifier:${id}"])
}

resource "datadog_monitor" "api_error_rate" {
  name     = "[P1] API error rate above 5% for 5 minutes (${var.environment})"
  type     = "query alert"
  priority = "1"
  query    = "sum(last_5m):(sum:trace.http.request.errors{${local.env},service:${var.api_service}}.as_count() / sum:trace.http.request.hits{${local.env},service:${var.api_service}}.as_count()) * 100 > 5"

  monitor_thresholds {
    critical = 5
  }

  require_full_window = false
  notify_no_data      = false
  renotify_interval   = 30
  tags                = concat(local.common_tags, ["priority:p1"])

  message = <<-EOT
    {{#is_alert}}More than 5% of requests to ${var.api_service} failed over the last 5 minutes ({{value}}%).{{/is_alert}}
    {{#is_recovery}}The API error rate is back under 5%.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/api-error-rate.md
    ${local.recipients[1]}
  EOT
}

resource "datadog_monitor" "llm_latency" {
  name     = "[P2] Average LLM API latency above 3 seconds for 10 minutes (${var.environment})"
  type     = "query alert"
  priority = "2"
  query    = "avg(last_10m):avg:${var.llm_latency_metric}{${local.env}} > 3"

  monitor_thresholds {
    critical = 3
  }

  require_full_window = false
  notify_no_data      = false
  renotify_interval   = 60
  tags                = concat(local.common_tags, ["priority:p2"])

  message = <<-EOT
    {{#is_alert}}LLM API calls averaged {{value}} s over the last 10 minutes (limit 3 s).{{/is_alert}}
    {{#is_recovery}}LLM API latency is back under 3 seconds.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/llm-latency.md
    ${local.recipients[2]}
  EOT
}

resource "datadog_monitor" "database_cpu" {
  name     = "[P3] Database CPU above 80% (${var.environment})"
  type     = "query alert"
  priority = "3"
  query    = "avg(last_15m):avg:aws.rds.cpuutilization{${local.databases}} by {dbinstanceidentifier} > 80"

  monitor_thresholds {
    critical = 80
  }

  notify_no_data = false
  tags           = concat(local.common_tags, ["priority:p3"])

  message = <<-EOT
    {{#is_alert}}Database {{dbinstanceidentifier.name}} has used {{value}}% CPU on average for 15 minutes (limit 80%).{{/is_alert}}
    {{#is_recovery}}Database {{dbinstanceidentifier.name}} CPU is back under 80%.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/database-cpu.md
    ${local.recipients[3]}
  EOT
}

resource "datadog_monitor" "webhook_backlog" {
  name     = "[P2] Webhook dispatcher backlog (${var.environment})"
  type     = "query alert"
  priority = "2"
  query    = "min(last_10m):max:gantry.webhook.backlog{${local.env}} > ${var.webhook_backlog_threshold}"

  monitor_thresholds {
    critical = var.webhook_backlog_threshold
  }

  notify_no_data = false
  tags           = concat(local.common_tags, ["priority:p2"])

  message = <<-EOT
    {{#is_alert}}{{value}} webhook deliveries have waited for dispatch for 10 minutes: pipelines are not starting.{{/is_alert}}
    {{#is_recovery}}The webhook backlog has drained.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/webhook-backlog.md
    ${local.recipients[2]}
  EOT
}

resource "datadog_monitor" "pipeline_failure_rate" {
  name     = "[P3] Merge pipeline failure rate (${var.environment})"
  type     = "query alert"
  priority = "3"
  # Pull-request pipelines fail by design when a change is wrong; merges to main should not.
  query = "sum(last_1h):(sum:gantry.pipeline.runs{${local.env},pipeline:merge,outcome:failed}.as_count() / sum:gantry.pipeline.runs{${local.env},pipeline:merge}.as_count()) * 100 > ${var.pipeline_failure_rate_threshold}"

  monitor_thresholds {
    critical = var.pipeline_failure_rate_threshold
  }

  notify_no_data = false
  tags           = concat(local.common_tags, ["priority:p3"])

  message = <<-EOT
    {{#is_alert}}{{value}}% of merge pipeline runs failed in the last hour.{{/is_alert}}
    {{#is_recovery}}Merge pipeline failures are back to normal.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/pipeline-failure-rate.md
    ${local.recipients[3]}
  EOT
}

resource "datadog_monitor" "release_failed" {
  name     = "[P1] Production release failed or rolled back (${var.environment})"
  type     = "query alert"
  priority = "1"
  query    = "sum(last_5m):sum:gantry.release.outcome{${local.env},outcome:failed}.as_count() + sum:gantry.release.outcome{${local.env},outcome:rolled_back}.as_count() > 0"

  monitor_thresholds {
    critical = 0
  }

  notify_no_data = false
  tags           = concat(local.common_tags, ["priority:p1"])

  message = <<-EOT
    {{#is_alert}}A production release failed or was rolled back in the last 5 minutes.{{/is_alert}}
    {{#is_recovery}}No failed release in the last 5 minutes.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/release-failed.md
    ${local.recipients[1]}
  EOT
}

resource "datadog_monitor" "worker_not_polling" {
  name     = "[P2] Prefect worker not polling ${var.work_pool_name} (${var.environment})"
  type     = "query alert"
  priority = "2"
  # A worker sends one heartbeat per poll; silence (no data) is the failure, so no data alerts.
  query = "sum(last_10m):sum:gantry.worker.heartbeat{${local.env},work_pool:${var.work_pool_name}}.as_count() < 1"

  monitor_thresholds {
    critical = 1
  }

  notify_no_data    = true
  no_data_timeframe = 10
  tags              = concat(local.common_tags, ["priority:p2"])

  message = <<-EOT
    {{#is_alert}}No worker has polled work pool ${var.work_pool_name} for 10 minutes: flow runs queue up unexecuted.{{/is_alert}}
    {{#is_no_data}}No worker heartbeat from ${var.work_pool_name} for 10 minutes.{{/is_no_data}}
    {{#is_recovery}}A worker is polling ${var.work_pool_name} again.{{/is_recovery}}
    Runbook: ${var.runbook_base_url}/worker-not-polling.md
    ${local.recipients[2]}
  EOT
}
