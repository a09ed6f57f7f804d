//! Driver traits the conductor plans over: power, management (boot device), boot and the
//! agent client. Implementations (fake, ipmi, redfish, pxe/ipxe) live in conductor-service;
//! the simulator implements them too.
