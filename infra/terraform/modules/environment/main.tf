# One environment of Gantry: its network, EKS cluster, PostgreSQL database, image registry,
# Prefect server and worker, and Datadog/PagerDuty monitoring. envs/staging and envs/production
# call this module with their own sizes; they configure the providers and the state backend.

locals {
  name = "gantry-${var.environment}"
}

module "network" {
  source = "../network"

  name               = local.name
  cluster_name       = local.name
  cidr_block         = var.network.cidr_block
  availability_zones = var.availability_zones
  single_nat_gateway = var.network.single_nat_gateway
  tags               = var.tags
}

module "cluster" {
  source = "../cluster"

  name                         = local.name
  vpc_id                       = module.network.vpc_id
  private_subnet_ids           = module.network.private_subnet_ids
  endpoint_public_access_cidrs = var.api_access_cidrs
  node_groups                  = var.node_groups
  tags                         = var.tags
}

module "database" {
  source = "../database"

  name                     = local.name
  environment              = var.environment
  vpc_id                   = module.network.vpc_id
  private_subnet_ids       = module.network.private_subnet_ids
  allowed_security_groups  = { cluster = module.cluster.cluster_security_group_id }
  instance_class           = var.database.instance_class
  allocated_storage_gb     = var.database.allocated_storage_gb
  max_allocated_storage_gb = var.database.max_allocated_storage_gb
  multi_az                 = var.database.multi_az
  deletion_protection      = var.database.deletion_protection
  backup_retention_days    = var.database.backup_retention_days
  tags                     = var.tags
}

module "registry" {
  source = "../registry"

  repositories = ["gantry"]
  tags         = var.tags
}

module "prefect" {
  source = "../prefect"

  environment             = var.environment
  server_replicas         = var.prefect.server_replicas
  worker_replicas         = var.prefect.worker_replicas
  database_host           = module.database.address
  database_port           = module.database.port
  database_name           = module.database.database_name
  database_secret_arn     = module.database.master_user_secret_arn
  webhook_secret_arn      = var.webhook_secret_arn
  webhook_repositories    = var.webhook_repositories
  gantry_image_repository = module.registry.repository_urls["gantry"]
  gantry_image_tag        = var.gantry_image_tag
  base_job_template_path  = "${path.module}/../../../k8s/work-pool/warm-base-job-template.json"

  provenance_signing_key_secret_arn = var.provenance_signing_key_secret_arn
  provenance_trusted_public_keys    = var.provenance_trusted_public_keys
}

module "monitoring" {
  source = "../monitoring"

  environment             = var.environment
  page_on_call            = var.page_on_call
  database_identifiers    = [module.database.instance_identifier]
  work_pool_name          = module.prefect.work_pool_name
  runbook_base_url        = var.runbook_base_url
  notify_handles          = var.notify_handles
  escalation_schedule_ids = var.escalation_schedule_ids
}
