output "cluster_name" {
  description = "Name of the EKS cluster (for `aws eks update-kubeconfig --name`)."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "HTTPS endpoint of the Kubernetes API server."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_ca_certificate" {
  description = "Base64-encoded certificate authority of the API server, for the kubernetes and helm providers."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "cluster_security_group_id" {
  description = "Security group EKS created for the control plane and managed nodes; the database admits this group."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster, for IAM roles of Kubernetes service accounts."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "node_group_names" {
  description = "Names of the managed node groups."
  value       = [for group in aws_eks_node_group.this : group.node_group_name]
}

output "autoscaler_role_arn" {
  description = "IAM role the cluster autoscaler's service account assumes (annotate it with eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.autoscaler.arn
}

output "autoscaler_args" {
  description = "Command-line flags for the cluster autoscaler: auto-discovery of this cluster's node groups and the scale-down settings."
  value = [
    "--cloud-provider=aws",
    "--node-group-auto-discovery=asg:tag=k8s.io/cluster-autoscaler/enabled,k8s.io/cluster-autoscaler/${var.name}",
    "--balance-similar-node-groups=${var.autoscaler.balance_similar_node_groups}",
    "--skip-nodes-with-local-storage=${var.autoscaler.skip_nodes_with_local_storage}",
    "--expander=${var.autoscaler.expander}",
    "--scale-down-unneeded-time=${var.autoscaler.scale_down_unneeded_time}",
    "--scale-down-utilization-threshold=${var.autoscaler.scale_down_utilization}",
  ]
}
