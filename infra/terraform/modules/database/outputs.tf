output "instance_identifier" {
  description = "RDS instance identifier; the database CPU monitor filters on it (dbinstanceidentifier tag)."
  value       = aws_db_instance.this.identifier
}

output "address" {
  description = "Host name of the database inside the VPC."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "PostgreSQL port."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Name of the database Prefect's server uses."
  value       = aws_db_instance.this.db_name
}

output "master_user_secret_arn" {
  description = "Secrets Manager secret (JSON with username and password) that RDS manages for the administrator."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "security_group_id" {
  description = "Security group of the database."
  value       = aws_security_group.this.id
}
