package computesdk

import (
	"context"
	"iter"
	"time"

	monitoringv1 "github.com/computesdk/computesdk/clients/go/api/monitoring/v1"
)

// Usage is one sample of a sandbox's resource use, in the spec's shape
// (u.CPU.Percent, u.Memory.UsedMB, u.Disk.TotalMB...), for GetResourceUsage
// and Monitor. The daemon's message is Raw.
type Usage struct {
	Time         time.Time
	CPU          CPUUsage
	Memory       SpaceUsage
	Disk         SpaceUsage
	Network      NetworkUsage
	ProcessCount int
	Raw          *monitoringv1.Usage
}

// CPUUsage is CPU time as a percent of one core: 200 is two cores busy.
type CPUUsage struct{ Percent float64 }

// SpaceUsage is memory or disk: MB used of the limit (MiB, as everywhere
// in the API), and that as a percent (0 with no limit).
type SpaceUsage struct {
	UsedMB  float64
	TotalMB float64
	Percent float64
}

// NetworkUsage is bytes through the sandbox's interface since it started;
// Enabled is false when it has no network beyond loopback.
type NetworkUsage struct {
	RxBytes uint64
	TxBytes uint64
	Enabled bool
}

func space(used, limit uint64) SpaceUsage {
	s := SpaceUsage{UsedMB: float64(used) / (1 << 20), TotalMB: float64(limit) / (1 << 20)}
	if limit > 0 {
		s.Percent = 100 * float64(used) / float64(limit)
	}
	return s
}

func usageFrom(p *monitoringv1.Usage) *Usage {
	return &Usage{Time: tsTime(p.GetSampleTime()), CPU: CPUUsage{Percent: p.GetCpuPercent()},
		Memory: space(p.GetMemoryUsedBytes(), p.GetMemoryLimitBytes()),
		Disk:   space(p.GetDiskUsedBytes(), p.GetDiskLimitBytes()),
		Network: NetworkUsage{RxBytes: p.GetNetworkRxBytes(), TxBytes: p.GetNetworkTxBytes(),
			Enabled: p.GetHasNetwork()},
		ProcessCount: int(p.GetProcessCount()), Raw: p}
}

// HealthReport is the result of every health check of a sandbox.
type HealthReport = monitoringv1.CheckHealthResponse

// AlertThreshold raises an alert when a metric ("cpu", "memory", "disk")
// crosses Percent and clears it under ClearPercent.
type AlertThreshold = monitoringv1.AlertThreshold

// ScalingRule scales up when use stays above Threshold percent.
type ScalingRule = monitoringv1.ScalingRule

// GetResourceUsage samples the sandbox's resource use now.
func (s *Sandbox) GetResourceUsage(ctx context.Context) (*Usage, error) {
	resp, err := s.Client().Raw.Monitoring.GetResourceUsage(ctx, &monitoringv1.GetResourceUsageRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return usageFrom(resp.GetUsage()), nil
}

// Usage is GetResourceUsage.
func (s *Sandbox) Usage(ctx context.Context) (*Usage, error) { return s.GetResourceUsage(ctx) }

// Monitor yields a sample every interval until ctx ends or the sandbox goes
// away; metrics ("cpu", "memory", "disk", "network", "processes"; none: all)
// limit what is sampled.
func (s *Sandbox) Monitor(ctx context.Context, interval time.Duration, metrics ...string) iter.Seq2[*Usage, error] {
	return received(ctx, func(ctx context.Context) (receiver[*monitoringv1.MonitorResponse], error) {
		return s.Client().Raw.Monitoring.Monitor(ctx, &monitoringv1.MonitorRequest{
			SandboxId: s.ID(), IntervalMs: uint32(interval.Milliseconds()), Metrics: metrics})
	}, func(r *monitoringv1.MonitorResponse) *Usage { return usageFrom(r.GetUsage()) })
}

// Limits are new caps; zero leaves a cap as it is.
type Limits struct {
	CPUPercent float64
	MemoryMB   uint64
	DiskMB     uint64
}

// SetResourceLimits changes caps on a running sandbox.
func (s *Sandbox) SetResourceLimits(ctx context.Context, l Limits) (Resources, error) {
	resp, err := s.Client().Raw.Monitoring.SetResourceLimits(ctx, &monitoringv1.SetResourceLimitsRequest{
		SandboxId: s.ID(), CpuPercent: l.CPUPercent, MemoryMb: l.MemoryMB, DiskMb: l.DiskMB})
	if err != nil {
		return Resources{}, err
	}
	return resourcesFrom(resp.GetResources()), nil
}

// Scale sets CPU cores and memory; zero leaves one as it is.
func (s *Sandbox) Scale(ctx context.Context, cpuCores float64, memoryMB uint64) (Resources, error) {
	resp, err := s.Client().Raw.Monitoring.Scale(ctx, &monitoringv1.ScaleRequest{
		SandboxId: s.ID(), CpuCores: cpuCores, MemoryMb: memoryMB})
	if err != nil {
		return Resources{}, err
	}
	return resourcesFrom(resp.GetResources()), nil
}

// SetAlertThresholds replaces the sandbox's alerts; each crossing is an "alert" event.
func (s *Sandbox) SetAlertThresholds(ctx context.Context, interval time.Duration, thresholds ...*AlertThreshold) error {
	_, err := s.Client().Raw.Monitoring.SetAlertThresholds(ctx, &monitoringv1.SetAlertThresholdsRequest{
		SandboxId: s.ID(), Thresholds: thresholds, IntervalMs: uint32(interval.Milliseconds())})
	return err
}

// AutoScaling configures ConfigureAutoScaling.
type AutoScaling struct {
	Enabled     bool
	CPU         *ScalingRule
	Memory      *ScalingRule
	MaxCPUCores float64
	MaxMemoryMB uint64
	Cooldown    time.Duration
	Interval    time.Duration
}

// ConfigureAutoScaling turns automatic scaling on or off; each step is an "autoscale" event.
func (s *Sandbox) ConfigureAutoScaling(ctx context.Context, a AutoScaling) error {
	_, err := s.Client().Raw.Monitoring.ConfigureAutoScaling(ctx, &monitoringv1.ConfigureAutoScalingRequest{
		SandboxId: s.ID(), Enabled: a.Enabled, Cpu: a.CPU, Memory: a.Memory, MaxCpuCores: a.MaxCPUCores,
		MaxMemoryMb: a.MaxMemoryMB, CooldownMs: uint32(a.Cooldown.Milliseconds()),
		IntervalMs: uint32(a.Interval.Milliseconds())})
	return err
}

// HealthCheck is the spec's healthCheck(): whether every built-in and
// registered check passes now (HealthReport says which failed).
func (s *Sandbox) HealthCheck(ctx context.Context) (bool, error) {
	r, err := s.HealthReport(ctx)
	if err != nil {
		return false, err
	}
	return r.GetHealthy(), nil
}

// HealthReport runs the built-in checks and every registered one now and reports each.
func (s *Sandbox) HealthReport(ctx context.Context) (*HealthReport, error) {
	return s.Client().Raw.Monitoring.CheckHealth(ctx, &monitoringv1.CheckHealthRequest{SandboxId: s.ID()})
}

// CheckHealth is HealthReport.
func (s *Sandbox) CheckHealth(ctx context.Context) (*HealthReport, error) { return s.HealthReport(ctx) }

// RegisterHealthCheck adds a command that passes when it exits 0; with an
// interval it also runs on its own, each run a "health" event.
func (s *Sandbox) RegisterHealthCheck(ctx context.Context, name, command string, interval, timeout time.Duration) error {
	_, err := s.Client().Raw.Monitoring.RegisterHealthCheck(ctx, &monitoringv1.RegisterHealthCheckRequest{
		SandboxId: s.ID(), Name: name, Command: command,
		IntervalMs: uint32(interval.Milliseconds()), TimeoutMs: uint32(timeout.Milliseconds())})
	return err
}

// UnregisterHealthCheck removes a registered check.
func (s *Sandbox) UnregisterHealthCheck(ctx context.Context, name string) error {
	_, err := s.Client().Raw.Monitoring.UnregisterHealthCheck(ctx, &monitoringv1.UnregisterHealthCheckRequest{
		SandboxId: s.ID(), Name: name})
	return err
}
