terraform {
  required_version = ">= 1.9"

  required_providers {
    datadog = {
      source  = "DataDog/datadog"
      version = "~> 3.50.0"
    }
    pagerduty = {
      source  = "PagerDuty/pagerduty"
      version = "~> 3.18.0"
    }
  }
}
