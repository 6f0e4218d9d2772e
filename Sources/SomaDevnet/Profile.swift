import SomaCore

/// The shape of a generated chain.
public struct DevnetProfile: Hashable, Sendable {
    /// A name for logs.
    public var name: String
    /// Validators in each committee.
    public var validators: Int
    /// Epochs; the last checkpoint of each carries the next committee and the state root.
    public var epochs: Int
    /// Checkpoints in all, including checkpoint 0 (the genesis).
    public var checkpoints: Int
    /// Transactions in each checkpoint after the genesis.
    public var transactionsPerCheckpoint: Int
    /// User accounts that send transactions.
    public var accounts: Int
    /// Shared objects in the genesis.
    public var sharedObjects: Int

    /// Creates a profile.
    public init(
        name: String, validators: Int, epochs: Int, checkpoints: Int, transactionsPerCheckpoint: Int,
        accounts: Int, sharedObjects: Int = 16
    ) {
        precondition(validators >= 1 && validators <= Committee.maxMembers, "1...1024 validators")
        precondition(epochs >= 1 && checkpoints >= epochs + 1, "every epoch needs a checkpoint after the genesis")
        precondition(accounts >= 1 && transactionsPerCheckpoint >= 0)
        self.name = name
        self.validators = validators
        self.epochs = epochs
        self.checkpoints = checkpoints
        self.transactionsPerCheckpoint = transactionsPerCheckpoint
        self.accounts = accounts
        self.sharedObjects = sharedObjects
    }

    /// 4 validators, 3 epochs, 2,000 checkpoints of 20 transactions.
    public static let demo = DevnetProfile(
        name: "demo", validators: 4, epochs: 3, checkpoints: 2_000, transactionsPerCheckpoint: 20, accounts: 64)

    /// 100 validators, 10 epochs, 10,000 checkpoints of 100 transactions; over a million
    /// live objects at the last epoch end.
    public static let bench = DevnetProfile(
        name: "bench", validators: 100, epochs: 10, checkpoints: 10_000, transactionsPerCheckpoint: 100,
        accounts: 2_000)

    /// A small chain for unit tests.
    public static let tiny = DevnetProfile(
        name: "tiny", validators: 4, epochs: 3, checkpoints: 30, transactionsPerCheckpoint: 5, accounts: 8,
        sharedObjects: 2)

    /// The profile with this name (`demo`, `bench`, `tiny`), if any.
    public static func named(_ name: String) -> DevnetProfile? {
        [demo, bench, tiny].first { $0.name == name }
    }

    /// The sequence number of the last checkpoint of `epoch`.
    public func lastCheckpoint(ofEpoch epoch: Int) -> UInt64 {
        UInt64((epoch + 1) * checkpoints / epochs - 1)
    }
}
