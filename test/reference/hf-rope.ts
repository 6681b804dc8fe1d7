// HF ↔ GGUF Q/K row order: moved to src/model/rope-order.ts (the random checkpoint writer uses it too).
export { hfRowOfGgufRow, permuteRopeRows } from '../../src/model/rope-order.ts';
