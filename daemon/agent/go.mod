module computesdk/agent

go 1.19
