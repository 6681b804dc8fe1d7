// The block subset of YAML that deploy/ manifests are written in, parsed for tests (no YAML
// package is installed): `---` documents, comments, indented mappings and `- ` sequences (items
// may open a mapping on their own line), plain, single- and double-quoted scalars, and the flow
// forms `{}` and `[]`. Anything else (anchors, tags, block scalars, non-empty flow collections)
// is refused with the line, so a manifest never parses silently wrong.

export type YamlValue = string | number | boolean | null | YamlValue[] | { [key: string]: YamlValue };

interface Line {
  indent: number;
  text: string;
  number: number;
}

export function parseYamlDocuments(source: string): YamlValue[] {
  const documents: Line[][] = [[]];
  source.split('\n').forEach((raw, i) => {
    const text = stripComment(raw).trimEnd();
    if (text === '---') documents.push([]);
    else if (text.trim() !== '') documents.at(-1)!.push({ indent: text.length - text.trimStart().length, text: text.trim(), number: i + 1 });
  });
  return documents.filter((lines) => lines.length > 0).map((lines) => {
    const parser = new BlockParser(lines);
    const value = parser.block(lines[0]!.indent);
    parser.expectEnd();
    return value;
  });
}

function stripComment(line: string): string {
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '#' && (i === 0 || /\s/.test(line[i - 1]!))) {
      return line.slice(0, i);
    }
  }
  return line;
}

class BlockParser {
  private at = 0;

  constructor(private readonly lines: Line[]) {}

  expectEnd(): void {
    const line = this.lines[this.at];
    if (line) throw new SyntaxError(`line ${line.number}: unexpected "${line.text}" (indentation?)`);
  }

  /** The mapping or sequence whose lines start at `indent`. */
  block(indent: number): YamlValue {
    const first = this.lines[this.at];
    if (!first || first.indent !== indent) throw new SyntaxError(`line ${first?.number ?? 'end'}: expected a block at indent ${indent}`);
    return first.text.startsWith('- ') || first.text === '-' ? this.sequence(indent) : this.mapping(indent);
  }

  private sequence(indent: number): YamlValue[] {
    const items: YamlValue[] = [];
    for (let line = this.lines[this.at]; line && line.indent === indent && (line.text.startsWith('- ') || line.text === '-'); line = this.lines[this.at]) {
      const rest = line.text.slice(1).trimStart();
      if (rest === '') {
        this.at++;
        items.push(this.block(this.lines[this.at]!.indent));
      } else if (keyValue(rest)) {
        // "- key: value" opens a mapping whose keys sit two columns further in.
        const inner = indent + (line.text.length - rest.length);
        this.lines[this.at] = { indent: inner, text: rest, number: line.number };
        items.push(this.mapping(inner));
      } else {
        this.at++;
        items.push(scalar(rest, line.number));
      }
    }
    return items;
  }

  private mapping(indent: number): { [key: string]: YamlValue } {
    const map: { [key: string]: YamlValue } = {};
    for (let line = this.lines[this.at]; line && line.indent === indent; line = this.lines[this.at]) {
      const pair = keyValue(line.text);
      if (!pair) throw new SyntaxError(`line ${line.number}: expected "key: value", got "${line.text}"`);
      if (pair.key in map) throw new SyntaxError(`line ${line.number}: duplicate key "${pair.key}"`);
      this.at++;
      if (pair.value !== '') {
        map[pair.key] = scalar(pair.value, line.number);
        continue;
      }
      const next = this.lines[this.at];
      // A sequence may sit at the key's own indent ("key:\n- a"), a mapping must be deeper.
      const nested = next && (next.indent > indent || (next.indent === indent && next.text.startsWith('- ')));
      map[pair.key] = nested ? this.block(next.indent) : null;
    }
    return map;
  }
}

function keyValue(text: string): { key: string; value: string } | undefined {
  const match = /^("(?:[^"\\]|\\.)*"|'[^']*'|[^\s'"{[][^:]*?):(?:\s+(.*))?$/.exec(text);
  if (!match) return undefined;
  const key = match[1]!;
  return { key: /^["']/.test(key) ? key.slice(1, -1) : key, value: match[2] ?? '' };
}

function scalar(text: string, lineNumber: number): YamlValue {
  if (text === '{}') return {};
  if (text === '[]') return [];
  if (/^["']/.test(text)) {
    if (text.at(-1) !== text[0]) throw new SyntaxError(`line ${lineNumber}: unterminated string ${text}`);
    return text[0] === '"' ? (JSON.parse(text) as string) : text.slice(1, -1).replaceAll("''", "'");
  }
  if (/^[&*!|>{[]/.test(text)) throw new SyntaxError(`line ${lineNumber}: unsupported YAML "${text}" (anchors, tags, block scalars, flow collections)`);
  if (text === 'true' || text === 'false') return text === 'true';
  if (text === 'null' || text === '~') return null;
  if (/^-?\d+(\.\d+)?$/.test(text)) return Number(text);
  return text;
}
