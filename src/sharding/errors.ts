// Typed errors of a shard group. A shard that fails, hangs or loses its device becomes one of
// these for the caller; nothing waits forever.

/** A shard failed (its GPU work threw, its device was lost, its worker died). */
export class ShardError extends Error {
  override name = 'ShardError';
  constructor(
    /** The failing shard's rank, or -1 when unknown. */
    readonly rank: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A shard did not reach a barrier, or did not finish a step, before its deadline. */
export class ShardTimeoutError extends ShardError {
  override name = 'ShardTimeoutError';
}

/** The group was stopped (another shard failed, or it is shutting down). */
export class ShardGroupStoppedError extends ShardError {
  override name = 'ShardGroupStoppedError';
}

/**
 * A shard gave up waiting for its peers at a collective. Not the culprit: the group reports the
 * shard that hung or failed instead (it answers to the coordinator's own deadline).
 */
export class ShardPeerTimeoutError extends ShardGroupStoppedError {
  override name = 'ShardPeerTimeoutError';
}
