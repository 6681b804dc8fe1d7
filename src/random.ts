// Deterministic pseudo-random numbers: seeded sampling, random test weights, reproducible tests.

/** A small, fast, seedable generator (mulberry32): the same seed gives the same draws everywhere. */
export function seededRandom(seed: number): () => number {
  // Seeds in [0, 2^32) are used as they are; the high bits of larger (or negative) integers are
  // folded in, so that e.g. 1 and 2^32 + 1 give different streams.
  const high = Math.floor(seed / 2 ** 32) | 0;
  let state = ((seed >>> 0) ^ Math.imul(high, 0x9e3779b9)) >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
