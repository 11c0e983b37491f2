// The KHO core.
