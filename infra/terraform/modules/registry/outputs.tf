output "repository_urls" {
  description = "Push/pull URL of each repository, by name (registry host/name, without tag or digest)."
  value       = { for name, repository in aws_ecr_repository.this : name => repository.repository_url }
}

output "repository_arns" {
  description = "ARN of each repository, by name, for IAM policies of the pushing worker."
  value       = { for name, repository in aws_ecr_repository.this : name => repository.arn }
}
