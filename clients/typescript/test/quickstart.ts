// The spec's Quick Start exactly as written, with the provider name changed to 'local'.
// test/surface.test.ts runs it with COMPUTESDK_SOCKET (or, in TLS mode, COMPUTESDK_ADDRESS, _TOKEN and _CA) pointing at a test daemon.
import { compute } from 'computesdkd-client'

// Create a new sandbox
const sandbox = await compute('local', {
  template: 'python',
  metadata: { project: 'my-app' }
})

// Use the sandbox
await sandbox.exec('python --version')

// Clean up when done
await sandbox.destroy()
