output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "IPv4 range of the VPC, for security group rules that admit traffic from inside it."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets, one per zone in the order of var.availability_zones: internet-facing load balancers and NAT gateways only."
  value       = [for zone in var.availability_zones : aws_subnet.public[zone].id]
}

output "private_subnet_ids" {
  description = "Private subnets, one per zone in the order of var.availability_zones: nodes and databases."
  value       = [for zone in var.availability_zones : aws_subnet.private[zone].id]
}

output "nat_gateway_ids" {
  description = "NAT gateways: one per zone, or one in total when single_nat_gateway is set."
  value       = [for gateway in aws_nat_gateway.this : gateway.id]
}
