# PagerDuty side of paging: one escalation policy, one service per paging priority, each with a
# Datadog integration whose key Datadog uses to open incidents (@pagerduty-<service name>).

locals {
  pagerduty_services = {
    p1 = { name = "gantry-${var.environment}-p1", urgency = "high", description = "P1: user-facing outage; pages the on-call at any hour." }
    p2 = { name = "gantry-${var.environment}-p2", urgency = "low", description = "P2: degraded service; low-urgency incident, handled in working hours." }
  }
}

resource "pagerduty_escalation_policy" "this" {
  name      = "gantry-${var.environment}"
  num_loops = 2

  dynamic "rule" {
    for_each = var.escalation_schedule_ids
    content {
      escalation_delay_in_minutes = var.escalation_delay_minutes
      target {
        type = "schedule_reference"
        id   = rule.value
      }
    }
  }
}

resource "pagerduty_service" "this" {
  for_each = local.pagerduty_services

  name                    = each.value.name
  description             = each.value.description
  escalation_policy       = pagerduty_escalation_policy.this.id
  alert_creation          = "create_alerts_and_incidents"
  acknowledgement_timeout = 1800
  auto_resolve_timeout    = 14400

  incident_urgency_rule {
    type    = "constant"
    urgency = each.value.urgency
  }
}

data "pagerduty_vendor" "datadog" {
  name = "Datadog"
}

resource "pagerduty_service_integration" "datadog" {
  for_each = pagerduty_service.this

  name    = "Datadog"
  service = each.value.id
  vendor  = data.pagerduty_vendor.datadog.id
}

# Needs the PagerDuty integration installed once in the Datadog account (see docs/deploy-to-cluster.md).
resource "datadog_integration_pagerduty_service_object" "this" {
  for_each = local.pagerduty_services

  service_name = each.value.name
  service_key  = pagerduty_service_integration.datadog[each.key].integration_key
}
