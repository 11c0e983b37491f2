/// An owned copy of one item, for callers that are not on a hot path.
public struct CacheValue: Sendable, Equatable {
  /// The value bytes.
  public var value: [UInt8]
  /// The client flags.
  public var flags: UInt32
  /// The CAS unique.
  public var cas: UInt64

  /// An item copy.
  public init(value: [UInt8], flags: UInt32, cas: UInt64) {
    self.value = value
    self.flags = flags
    self.cas = cas
  }
}

extension CacheStore {
  /// `get`, copying the item out.
  public func get(_ key: String) -> CacheValue? {
    withBytes(key) { key in
      get(key) { CacheValue(value: Array($0.value), flags: $0.flags, cas: $0.cas) }
    }
  }

  /// `getAndTouch`, copying the item out.
  public func getAndTouch(_ key: String, exptime: Int64) throws(CacheOperationError) -> CacheValue?
  {
    try withBytes(key) { key throws(CacheOperationError) in
      try getAndTouch(key, exptime: exptime) {
        CacheValue(value: Array($0.value), flags: $0.flags, cas: $0.cas)
      }
    }
  }

  /// `store` with `.set`, or another mode.
  @discardableResult
  public func set(
    _ key: String, value: [UInt8], flags: UInt32 = 0, exptime: Int64 = 0, mode: StoreMode = .set
  ) throws(CacheOperationError) -> StoreResult {
    try withBytes(key) { key throws(CacheOperationError) in
      try withBytes(value) { value throws(CacheOperationError) in
        try store(mode, key: key, value: value, flags: flags, exptime: exptime)
      }
    }
  }

  /// `delete` by string key.
  public func delete(_ key: String) throws(CacheOperationError) -> Bool {
    try withBytes(key) { key throws(CacheOperationError) in try delete(key) }
  }

  /// `touch` by string key.
  public func touch(_ key: String, exptime: Int64) throws(CacheOperationError) -> Bool {
    try withBytes(key) { key throws(CacheOperationError) in try touch(key, exptime: exptime) }
  }

  /// `arithmetic` by string key.
  public func arithmetic(_ key: String, increment: Bool, delta: UInt64) throws(CacheOperationError)
    -> UInt64?
  {
    try withBytes(key) { key throws(CacheOperationError) in
      try arithmetic(key, increment: increment, delta: delta)
    }
  }
}

@inline(__always) func withBytes<R, E: Error>(
  _ string: String, _ body: (UnsafeRawBufferPointer) throws(E) -> R
)
  throws(E) -> R
{
  var copy = string
  // withUTF8 only rethrows untyped errors: carry the typed one out in a Result.
  let result = copy.withUTF8 { utf8 in
    Result { () throws(E) -> R in try body(UnsafeRawBufferPointer(utf8)) }
  }
  return try result.get()
}

@inline(__always) func withBytes<R, E: Error>(
  _ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(E) -> R
)
  throws(E) -> R
{
  let result = bytes.withUnsafeBytes { raw in Result { () throws(E) -> R in try body(raw) } }
  return try result.get()
}
