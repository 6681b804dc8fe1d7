// The merge loop shared by both tokenizer models: start from single characters and repeatedly merge
// the best adjacent pair (ties: the leftmost), as llama.cpp's SentencePiece and BPE sessions do.
// Only the notion of "best" differs: SentencePiece ranks a pair by the score of the merged token,
// byte-level BPE by the rank of the merge rule (a lower rank is better: pass its negation).
// A heap of candidates makes this O(n log n), so a 1 MB fragment costs no more per byte than a word.

/** Does merge candidate A come out of the queue before B? Higher score first, then the leftmost. */
function ranksBefore(scoreA: number, leftA: number, scoreB: number, leftB: number): boolean {
  return scoreA > scoreB || (scoreA === scoreB && leftA < leftB);
}

/**
 * Candidate merges of two adjacent symbols, best first by `ranksBefore` (llama.cpp's
 * `llm_bigram_spm::comparator` and `llm_bigram_bpe::comparator`). Entries go stale when a
 * neighbour merges first; the caller checks them when they come out, as llama.cpp does, instead of
 * deleting them from the heap.
 */
class BigramQueue {
  private score = new Float64Array(64);
  private left = new Int32Array(64);
  private right = new Int32Array(64);
  private size = new Int32Array(64);
  length = 0;

  // The entry removed by the last `pop`.
  topLeft = 0;
  topRight = 0;
  topSize = 0;

  push(score: number, left: number, right: number, size: number): void {
    if (this.length === this.score.length) this.grow();
    let i = this.length++;
    // Sift up: parents that rank after the new entry move down one level.
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!ranksBefore(score, left, this.score[parent]!, this.left[parent]!)) break;
      this.move(parent, i);
      i = parent;
    }
    this.set(i, score, left, right, size);
  }

  /** Removes the best entry into `topLeft`, `topRight`, `topSize`. */
  pop(): void {
    this.topLeft = this.left[0]!;
    this.topRight = this.right[0]!;
    this.topSize = this.size[0]!;
    const last = --this.length;
    if (last === 0) return;
    const score = this.score[last]!;
    const left = this.left[last]!;
    const right = this.right[last]!;
    const size = this.size[last]!;
    // Sift the former last entry down from the root.
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= last) break;
      if (child + 1 < last && ranksBefore(this.score[child + 1]!, this.left[child + 1]!, this.score[child]!, this.left[child]!)) child++;
      if (!ranksBefore(this.score[child]!, this.left[child]!, score, left)) break;
      this.move(child, i);
      i = child;
    }
    this.set(i, score, left, right, size);
  }

  private set(i: number, score: number, left: number, right: number, size: number): void {
    this.score[i] = score;
    this.left[i] = left;
    this.right[i] = right;
    this.size[i] = size;
  }

  private move(from: number, to: number): void {
    this.set(to, this.score[from]!, this.left[from]!, this.right[from]!, this.size[from]!);
  }

  private grow(): void {
    const capacity = this.score.length * 2;
    const score = new Float64Array(capacity);
    const left = new Int32Array(capacity);
    const right = new Int32Array(capacity);
    const size = new Int32Array(capacity);
    score.set(this.score);
    left.set(this.left);
    right.set(this.right);
    size.set(this.size);
    this.score = score;
    this.left = left;
    this.right = right;
    this.size = size;
  }
}

/**
 * How good merging two adjacent symbols is: `text.slice(start, start + leftLength)` and the
 * `rightLength` code units after it. `undefined`: these two never merge.
 */
export type PairScore = (start: number, leftLength: number, rightLength: number) => number | undefined;

/** Merges the code points of `text` pair by pair, best `pairScore` first; returns the final symbols in order. */
export function mergeSymbols(text: string, pairScore: PairScore): string[] {
  // Symbols: one per code point at first, as a doubly linked list over the text. `length` is in
  // UTF-16 code units; a merged-away symbol has length 0.
  const capacity = text.length;
  const start = new Int32Array(capacity);
  const length = new Int32Array(capacity);
  const prev = new Int32Array(capacity);
  const next = new Int32Array(capacity);
  let count = 0;
  for (let offset = 0; offset < text.length; count++) {
    const unitLength = text.codePointAt(offset)! > 0xffff ? 2 : 1;
    start[count] = offset;
    length[count] = unitLength;
    prev[count] = count - 1;
    offset += unitLength;
    next[count] = offset === text.length ? -1 : count + 1;
  }
  if (count === 0) return [];

  const queue = new BigramQueue();
  const tryAddBigram = (left: number, right: number): void => {
    if (left < 0 || right < 0) return;
    const score = pairScore(start[left]!, length[left]!, length[right]!);
    if (score !== undefined) queue.push(score, left, right, length[left]! + length[right]!);
  };

  for (let i = 1; i < count; i++) tryAddBigram(i - 1, i);

  while (queue.length > 0) {
    queue.pop();
    const left = queue.topLeft;
    const right = queue.topRight;
    // Stale entry: one side already merged into something else. (A symbol only grows by taking in
    // its right neighbour, so equal total length means both sides are unchanged.)
    if (length[left] === 0 || length[right] === 0 || length[left]! + length[right]! !== queue.topSize) continue;

    length[left] = length[left]! + length[right]!;
    length[right] = 0;
    next[left] = next[right]!;
    if (next[right]! >= 0) prev[next[right]!] = left;

    tryAddBigram(prev[left]!, left);
    tryAddBigram(left, next[left]!);
  }

  const symbols: string[] = [];
  for (let i = 0; i !== -1; i = next[i]!) symbols.push(text.slice(start[i], start[i]! + length[i]!));
  return symbols;
}
