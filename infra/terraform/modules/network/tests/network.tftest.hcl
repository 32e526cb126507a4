mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
}

variables {
  name               = "gantry-test"
  cluster_name       = "gantry-test"
  availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

run "three_zones_get_public_and_private_subnets_and_a_nat_each" {
  command = plan

  assert {
    condition     = length(aws_subnet.public) == 3 && length(aws_subnet.private) == 3
    error_message = "Expected one public and one private subnet per zone."
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 3
    error_message = "A highly available network has one NAT gateway per zone."
  }

  assert {
    condition     = aws_subnet.private["eu-west-1a"].cidr_block == "10.0.48.0/20"
    error_message = "Private subnets come after the three public ranges."
  }
}

run "single_nat_gateway_serves_every_zone" {
  command = plan

  variables {
    single_nat_gateway = true
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 1 && length(aws_route.private_nat) == 3
    error_message = "One NAT gateway, still one default route per private route table."
  }
}

run "two_zones_are_refused" {
  command = plan

  variables {
    availability_zones = ["eu-west-1a", "eu-west-1b"]
  }

  expect_failures = [var.availability_zones]
}
