"""Collectors (NVML, Redfish, SNMP, replay, simulator feed), edge validation and the buffered producer. No modelling, no decisions."""
