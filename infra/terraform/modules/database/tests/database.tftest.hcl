mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/mock" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
}

variables {
  name                    = "gantry-test"
  environment             = "production"
  vpc_id                  = "vpc-123"
  private_subnet_ids      = ["subnet-a", "subnet-b", "subnet-c"]
  allowed_security_groups = { cluster = "sg-cluster" }
}

run "production_database_is_encrypted_multi_az_protected_and_private" {
  command = plan

  assert {
    condition     = aws_db_instance.this.storage_encrypted && aws_db_instance.this.multi_az && aws_db_instance.this.deletion_protection
    error_message = "Production: encrypted, multi-AZ, deletion protection."
  }

  assert {
    condition     = aws_db_instance.this.publicly_accessible == false
    error_message = "The database is never publicly accessible."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.from_cluster["cluster"].referenced_security_group_id == "sg-cluster" && aws_vpc_security_group_ingress_rule.from_cluster["cluster"].from_port == 5432
    error_message = "PostgreSQL is open to the cluster's security group, on its port only."
  }

  assert {
    condition     = aws_db_instance.this.backup_retention_period >= 7
    error_message = "Automated backups are on."
  }

  assert {
    condition     = aws_db_instance.this.manage_master_user_password
    error_message = "The master password is kept by RDS in Secrets Manager."
  }
}

run "production_without_deletion_protection_is_refused" {
  command = plan

  variables {
    deletion_protection = false
  }

  expect_failures = [var.deletion_protection]
}

run "production_single_zone_is_refused" {
  command = plan

  variables {
    multi_az = false
  }

  expect_failures = [var.multi_az]
}

run "staging_may_run_single_zone" {
  command = plan

  variables {
    environment         = "staging"
    multi_az            = false
    deletion_protection = false
  }

  assert {
    condition     = aws_db_instance.this.multi_az == false && aws_db_instance.this.storage_encrypted
    error_message = "Staging may be single-zone but is still encrypted."
  }
}
