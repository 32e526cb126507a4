output "cluster_name" {
  description = "EKS cluster of this environment (`aws eks update-kubeconfig --name <this>`)."
  value       = module.cluster.cluster_name
}

output "cluster_endpoint" {
  description = "API endpoint of the EKS cluster, for the root's kubernetes and helm providers."
  value       = module.cluster.cluster_endpoint
}

output "cluster_ca_certificate" {
  description = "Base64 CA certificate of the EKS cluster, for the root's kubernetes and helm providers."
  value       = module.cluster.cluster_ca_certificate
}

output "prefect_api_url" {
  description = "In-cluster Prefect API URL."
  value       = module.prefect.prefect_api_url
}

output "gantry_image_repository" {
  description = "Registry repository to push Gantry's image to."
  value       = module.registry.repository_urls["gantry"]
}

output "database_instance" {
  description = "RDS instance identifier of this environment's own database."
  value       = module.database.instance_identifier
}

output "autoscaler" {
  description = "IAM role and flags for the cluster autoscaler."
  value       = { role_arn = module.cluster.autoscaler_role_arn, args = module.cluster.autoscaler_args }
}

output "monitor_ids" {
  description = "Datadog monitor IDs by name."
  value       = module.monitoring.monitor_ids
}
