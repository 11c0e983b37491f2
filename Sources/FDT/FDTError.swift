/// Why a blob was refused, and where.
///
/// Every error of the reader names the byte offset in the blob at which the
/// problem was found, so that `kho dt check` can point at it:
///
/// ```swift
/// do {
///   _ = try FlattenedDeviceTree(bytes: [0, 1, 2])
/// } catch {
///   print(error)  // "offset 0: truncated: blob of 3 bytes is shorter than ..."
/// }
/// ```
public struct FDTError: Error, Sendable, Equatable, CustomStringConvertible {
  /// What is wrong. Callers branch on this.
  public enum Kind: Sendable, Equatable {
    /// The blob ends before something it declares (libfdt's `FDT_ERR_TRUNCATED`).
    case truncated
    /// The magic number is not `0xd00dfeed` (`FDT_ERR_BADMAGIC`).
    case badMagic
    /// A version this reader does not handle (`FDT_ERR_BADVERSION`).
    case badVersion
    /// Header offsets or sizes that overlap, overflow or leave the blob
    /// (`FDT_ERR_BADLAYOUT`, `FDT_ERR_BADOFFSET`).
    case badLayout
    /// A malformed token stream: unknown token, unbalanced nodes, two
    /// roots, a named root, data after the end (`FDT_ERR_BADSTRUCTURE`).
    case badStructure
    /// A node or property name that is empty where it may not be, or holds
    /// a character the Devicetree Specification does not allow.
    case badName
    /// A property's name offset outside the strings block, or a name that
    /// is not terminated inside it.
    case badString
    /// The writer's buffer is full (`FDT_ERR_NOSPACE`): grow and retry.
    case noSpace
    /// The writer was used out of order (`FDT_ERR_BADSTATE`): a property
    /// outside a node, unbalanced nodes, a second `finish`.
    case badState
    /// A value of the wrong size or shape for the accessor used.
    case badValue
    /// A path or name that does not exist (`FDT_ERR_NOTFOUND`).
    case notFound
  }

  /// What kind of damage it is.
  public var kind: Kind
  /// The byte offset in the blob where the problem is, when there is one.
  public var offset: Int?
  /// A sentence for a person.
  public var message: String

  /// An error of `kind` at byte `offset` of the blob (nil: not at one place), with a message for people.
  public init(_ kind: Kind, at offset: Int?, _ message: String) {
    self.kind = kind
    self.offset = offset
    self.message = message
  }

  public var description: String {
    if let offset {
      return "offset \(offset): \(kind): \(message)"
    }
    return "\(kind): \(message)"
  }
}
