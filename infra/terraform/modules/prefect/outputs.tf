output "namespace" {
  description = "Namespace of the Prefect server, worker and webhook receiver."
  value       = kubernetes_namespace_v1.gantry.metadata[0].name
}

output "prefect_api_url" {
  description = "In-cluster URL of the Prefect API (PREFECT_API_URL for pods in the cluster)."
  value       = local.api_url
}

output "work_pool_name" {
  description = "Work pool (type gantry-warm) the warm worker polls; deployments in prefect.yaml target it."
  value       = var.work_pool_name
}

output "server_release" {
  description = "Helm release name and chart version of the Prefect server."
  value       = { name = helm_release.server.name, version = helm_release.server.version }
}

output "worker_release" {
  description = "Helm release name and chart version of the Prefect worker."
  value       = { name = helm_release.worker.name, version = helm_release.worker.version }
}

output "auth_secret_name" {
  description = "Kubernetes Secret (key auth-string) holding the Prefect API credential, user:password: the UI's login and PREFECT_API_AUTH_STRING."
  value       = kubernetes_secret_v1.prefect_auth.metadata[0].name
}
