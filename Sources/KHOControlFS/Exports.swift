// The system layer's types (Errno, SystemCallError, FileDescriptor) are
// part of this module's API: whoever imports it gets them, as NIOPosix
// re-exports NIOCore.
@_exported import KHOSystem
