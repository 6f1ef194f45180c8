// Reports the minified + gzipped size of the core (what a browser app ships) and fails
// above the limit. Usage: node scripts/size.mjs [limit-bytes]
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const limit = Number(process.argv[2] ?? 8 * 1024);

async function measure(entry) {
  const result = await build({
    absWorkingDir: root,
    entryPoints: [entry],
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2022',
    external: ['@msgpack/msgpack'],
    write: false,
  });
  const code = result.outputFiles[0].contents;
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length };
}

const core = await measure('src/index.ts');
const msgpack = await measure('src/msgpack.ts');
console.log(`core: ${core.minified} B minified, ${core.gzipped} B minified+gzipped (limit ${limit} B)`);
console.log(`msgpack entry (without @msgpack/msgpack itself): ${msgpack.minified} B minified, ${msgpack.gzipped} B gzipped`);
if (core.gzipped > limit) {
  console.error(`the core is ${core.gzipped - limit} B over the limit`);
  process.exit(1);
}
