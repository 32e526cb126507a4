output "cluster_name" {
  description = "EKS cluster of this environment (`aws eks update-kubeconfig --name <this>`)."
  value       = module.environment.cluster_name
}

output "prefect_api_url" {
  description = "In-cluster Prefect API URL."
  value       = module.environment.prefect_api_url
}

output "gantry_image_repository" {
  description = "Registry repository to push Gantry's image to."
  value       = module.environment.gantry_image_repository
}

output "database_instance" {
  description = "RDS instance identifier of this environment's own database."
  value       = module.environment.database_instance
}

output "autoscaler" {
  description = "IAM role and flags for the cluster autoscaler."
  value       = module.environment.autoscaler
}

output "monitor_ids" {
  description = "Datadog monitor IDs by name."
  value       = module.environment.monitor_ids
}
