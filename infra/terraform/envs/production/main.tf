locals {
  environment = "production"
  name        = "gantry-${local.environment}"
  tags        = { Project = "gantry", Environment = local.environment, ManagedBy = "terraform" }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

provider "kubernetes" {
  host                   = module.cluster.cluster_endpoint
  cluster_ca_certificate = base64decode(module.cluster.cluster_ca_certificate)
  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.cluster.cluster_name, "--region", var.region]
  }
}

provider "helm" {
  kubernetes {
    host                   = module.cluster.cluster_endpoint
    cluster_ca_certificate = base64decode(module.cluster.cluster_ca_certificate)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.cluster.cluster_name, "--region", var.region]
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

module "network" {
  source = "../../modules/network"

  name               = local.name
  cluster_name       = local.name
  cidr_block         = "10.10.0.0/16"
  availability_zones = var.availability_zones
  # One NAT gateway per zone: losing a zone never cuts the others off.
  single_nat_gateway = false
  tags               = local.tags
}

module "cluster" {
  source = "../../modules/cluster"

  name                         = local.name
  vpc_id                       = module.network.vpc_id
  private_subnet_ids           = module.network.private_subnet_ids
  endpoint_public_access_cidrs = var.api_access_cidrs
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
  tags = local.tags
}

module "database" {
  source = "../../modules/database"

  name                       = local.name
  environment                = local.environment
  vpc_id                     = module.network.vpc_id
  private_subnet_ids         = module.network.private_subnet_ids
  allowed_security_group_ids = [module.cluster.cluster_security_group_id]
  instance_class             = "db.r6g.large"
  allocated_storage_gb       = 100
  max_allocated_storage_gb   = 1000
  multi_az                   = true
  deletion_protection        = true
  backup_retention_days      = 30
  tags                       = local.tags
}

module "registry" {
  source = "../../modules/registry"

  repositories = ["gantry"]
  tags         = local.tags
}

module "prefect" {
  source = "../../modules/prefect"

  environment             = local.environment
  server_replicas         = 2
  worker_replicas         = 2
  database_host           = module.database.address
  database_port           = module.database.port
  database_name           = module.database.database_name
  database_secret_arn     = module.database.master_user_secret_arn
  webhook_secret_arn      = var.webhook_secret_arn
  gantry_image_repository = module.registry.repository_urls["gantry"]
  gantry_image_tag        = var.gantry_image_tag
  base_job_template_path  = "${path.root}/../../../k8s/work-pool/base-job-template.json"
}

module "monitoring" {
  source = "../../modules/monitoring"

  environment             = local.environment
  page_on_call            = true
  database_identifiers    = [module.database.instance_identifier]
  work_pool_name          = module.prefect.work_pool_name
  runbook_base_url        = var.runbook_base_url
  notify_handles          = var.notify_handles
  escalation_schedule_ids = var.escalation_schedule_ids
}
