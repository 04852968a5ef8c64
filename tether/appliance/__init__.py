"""The appliance: devices brought up from files and kept in line with them."""
