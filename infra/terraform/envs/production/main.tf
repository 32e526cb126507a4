locals {
  environment = "production"
  tags        = { Project = "gantry", Environment = local.environment, ManagedBy = "terraform" }
  # Public keys are not secret: they are reviewed and committed here, one <keyid>.pub per key;
  # adding and removing files is how a key is trusted, rotated and revoked.
  provenance_trusted_public_keys = {
    for name in fileset("${path.module}/provenance-trusted-keys", "*.pub") :
    name => file("${path.module}/provenance-trusted-keys/${name}")
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

provider "kubernetes" {
  host                   = module.environment.cluster_endpoint
  cluster_ca_certificate = base64decode(module.environment.cluster_ca_certificate)
  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.environment.cluster_name, "--region", var.region]
  }
}

provider "helm" {
  kubernetes {
    host                   = module.environment.cluster_endpoint
    cluster_ca_certificate = base64decode(module.environment.cluster_ca_certificate)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.environment.cluster_name, "--region", var.region]
    }
  }
}

provider "datadog" {
  api_key = var.datadog_api_key
  app_key = var.datadog_app_key
  api_url = var.datadog_api_url
}

provider "pagerduty" {
  token = var.pagerduty_token
}

# This environment's own values; what staging and production share is composed in modules/environment.
module "environment" {
  source = "../../modules/environment"

  environment = local.environment
  tags        = local.tags
  network = {
    cidr_block = "10.10.0.0/16"
    # One NAT gateway per zone: losing a zone never cuts the others off.
    single_nat_gateway = false
  }
  node_groups = {
    general = {
      instance_types = ["m6i.xlarge"]
      min_size       = 3
      max_size       = 12
      desired_size   = 3
    }
    pipelines = {
      instance_types = ["c6i.2xlarge"]
      min_size       = 1
      max_size       = 10
      desired_size   = 2
      labels         = { "gantry.dev/workload" = "pipelines" }
    }
  }
  database = {
    instance_class           = "db.r6g.large"
    allocated_storage_gb     = 100
    max_allocated_storage_gb = 1000
    multi_az                 = true
    deletion_protection      = true
    backup_retention_days    = 30
  }
  prefect      = { server_replicas = 2, worker_replicas = 2 }
  page_on_call = true

  availability_zones      = var.availability_zones
  api_access_cidrs        = var.api_access_cidrs
  gantry_image_tag        = var.gantry_image_tag
  webhook_secret_arn      = var.webhook_secret_arn
  webhook_repositories    = var.webhook_repositories
  runbook_base_url        = var.runbook_base_url
  notify_handles          = var.notify_handles
  escalation_schedule_ids = var.escalation_schedule_ids

  provenance_signing_key_secret_arn = var.provenance_signing_secret_arn
  provenance_trusted_public_keys    = local.provenance_trusted_public_keys
}
