// The paged KV cache: its layout and the WGSL that finds a (sequence, position)'s row.
//
// KV cache layout (one K and one V buffer per layer, f32), paged:
//   cache[row][kvHead * headDim + d]     i.e. [totalBlocks * blockSize][nKvHeads * headDim]
// Positions are grouped into blocks of `blockSize` rows. Each sequence has a block table that maps
// its logical block (position / blockSize) to a physical block, so the row of position p of the
// sequence in slot s is  blockTable[s][p / blockSize] * blockSize + p % blockSize.  Sequences take
// and return blocks as they start and end (vLLM's PagedAttention), and a batch can mix tokens of
// many sequences: each token names its sequence slot.

export interface KvCacheShape {
  nTokens: number;
  nKvHeads: number;
  headDim: number;
}

/** How tokens find their cache rows: sequence slot per token and a block table per slot. */
export interface KvPaging {
  /** u32 per token: the sequence slot the token belongs to. */
  tokenSlots: GPUBuffer;
  /** u32 [slots][blocksPerSequence]: the physical block of each logical block of each slot. */
  blockTable: GPUBuffer;
  /** Positions per block. */
  blockSize: number;
  /** Logical blocks per sequence (a sequence holds at most blocksPerSequence × blockSize positions). */
  blocksPerSequence: number;
}

/** The WGSL that maps (slot, position) to a cache row through the block table (needs a `blockTable` binding). */
export function pagingWgsl(paging: KvPaging): string {
  return /* wgsl */ `
const BLOCK_SIZE = ${paging.blockSize}u;
const BLOCKS_PER_SEQUENCE = ${paging.blocksPerSequence}u;
const SEQUENCE_CAPACITY = ${paging.blockSize * paging.blocksPerSequence}u;
fn cacheRow(slot: u32, position: u32) -> u32 {
  return blockTable[slot * BLOCKS_PER_SEQUENCE + position / BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE;
}
`;
}

export interface AttentionShape extends KvCacheShape {
  nHeads: number;
}
