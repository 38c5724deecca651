"""The REST routes the fake serves (method, path pattern, rpc name) and which rpcs mutate."""

from __future__ import annotations


_Z = r"/zones/(?P<zone>[^/]+)"
_I = _Z + r"/instances/(?P<instance>[^/]+)"
_O = _Z + r"/operations/(?P<operation>[^/]+)"
_S = r"/regions/(?P<region>[^/]+)/subnetworks"
_ROUTES: list[tuple[str, str, str]] = [
    ("POST", _Z + "/instances", "instances.insert"),
    ("POST", _Z + "/instances/bulkInsert", "instances.bulkInsert"),
    ("GET", _Z + "/instances", "instances.list"),
    ("GET", _I, "instances.get"),
    ("DELETE", _I, "instances.delete"),
    ("GET", _I + "/serialPort", "instances.getSerialPortOutput"),
    ("POST", _I + "/simulateMaintenanceEvent", "instances.simulateMaintenanceEvent"),
    ("POST", _I + "/start", "instances.start"),
    ("POST", _I + "/stop", "instances.stop"),
    ("POST", _I + "/setMetadata", "instances.setMetadata"),
    ("POST", _I + "/setLabels", "instances.setLabels"),
    ("POST", _I + "/attachDisk", "instances.attachDisk"),
    ("POST", _I + "/detachDisk", "instances.detachDisk"),
    ("GET", "/aggregated/instances", "instances.aggregatedList"),
    ("POST", _Z + "/disks", "disks.insert"),
    ("GET", _Z + "/disks", "disks.list"),
    ("GET", _Z + "/disks/(?P<disk>[^/]+)", "disks.get"),
    ("DELETE", _Z + "/disks/(?P<disk>[^/]+)", "disks.delete"),
    ("GET", _Z + "/operations", "zoneOperations.list"),
    ("GET", _O, "zoneOperations.get"),
    ("DELETE", _O, "zoneOperations.delete"),
    ("POST", _O + "/wait", "zoneOperations.wait"),
    ("GET", "/global/images/family/(?P<family>[^/]+)", "images.getFromFamily"),
    ("GET", "/global/images/(?P<image>[^/]+)", "images.get"),
    ("GET", "/global/images", "images.list"),
    ("POST", "/global/images", "images.insert"),
    ("DELETE", "/global/images/(?P<image>[^/]+)", "images.delete"),
    ("GET", "/global/operations/(?P<operation>[^/]+)", "globalOperations.get"),
    ("POST", "/global/operations/(?P<operation>[^/]+)/wait", "globalOperations.wait"),
    ("GET", _Z + "/machineTypes", "machineTypes.list"),
    ("GET", _Z + "/machineTypes/(?P<machine_type>[^/]+)", "machineTypes.get"),
    ("GET", "/aggregated/machineTypes", "machineTypes.aggregatedList"),
    ("GET", _Z + "/acceleratorTypes", "acceleratorTypes.list"),
    ("GET", _Z + "/acceleratorTypes/(?P<accelerator_type>[^/]+)", "acceleratorTypes.get"),
    ("GET", "/aggregated/acceleratorTypes", "acceleratorTypes.aggregatedList"),
    ("GET", "/zones", "zones.list"),
    ("GET", _Z, "zones.get"),
    ("GET", "/regions/(?P<region>[^/]+)", "regions.get"),
    ("POST", "/regions/(?P<region>[^/]+)/advice/capacity", "advice.capacity"),
    ("GET", "/global/networks/(?P<network>[^/]+)", "networks.get"),
    ("GET", "/global/networks", "networks.list"),
    ("POST", "/global/networks", "networks.insert"),
    ("GET", "/global/firewalls/(?P<firewall>[^/]+)", "firewalls.get"),
    ("GET", "/global/firewalls", "firewalls.list"),
    ("POST", "/global/firewalls", "firewalls.insert"),
    ("GET", _S + "/(?P<subnetwork>[^/]+)", "subnetworks.get"),
    ("GET", _S, "subnetworks.list"),
    ("POST", _S, "subnetworks.insert"),
    ("POST", _S + "/(?P<subnetwork>[^/]+)/setPrivateIpGoogleAccess", "subnetworks.setPrivateIpGoogleAccess"),
    ("GET", "", "projects.get"),
]

_SETTERS = ("instances.setMetadata", "instances.setLabels")
# Mutations of global resources, answered with a global operation (requestId applies to them too).
_GLOBAL_MUTATIONS = ("images.insert", "images.delete", "networks.insert", "firewalls.insert")
_MUTATIONS = {
    "instances.delete": "_h_delete",
    "instances.stop": "_h_stop",
    "instances.start": "_h_start",
    "instances.simulateMaintenanceEvent": "_h_maintenance",
    "instances.insert": "_h_insert",
    "instances.bulkInsert": "_h_bulk_insert",
    "disks.insert": "_h_disks",
    "disks.delete": "_h_disks",
    "instances.attachDisk": "_h_attach",
    "instances.detachDisk": "_h_attach",
}
